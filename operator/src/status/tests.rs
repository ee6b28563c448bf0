//! The status builder against a table of passes: every phase, every reason of every
//! condition, and the order in which `Degraded` causes outrank each other.

use devicegrid_proto::views::{BalanceView, MemberView, PartitionsView};
use devicegrid_proto::MemberState;
use k8s_openapi::api::apps::v1::StatefulSetStatus;

use super::*;

/// One pass's observations, healthy until a case changes them.
struct Fixture {
    grid: DeviceGrid,
    names: Names,
    sts: StatefulSet,
    view: Option<ClusterView>,
    step: ScaleStep,
    refused: Option<String>,
    roll: Roll,
}

fn member(id: u64, state: MemberState) -> MemberView {
    MemberView {
        id,
        address: format!("fleet-{}.fleet-members.iot.svc:7001", id - 1),
        peer_address: None,
        zone: None,
        state,
        reachable: true,
        ready: true,
        partitions_led: 90,
        partitions_held: 271,
    }
}

impl Fixture {
    /// Three ready pods, a grid of three active members, balanced, every partition led.
    fn healthy() -> Fixture {
        let spec = serde_json::from_value(serde_json::json!({ "replicas": 3, "image": "dg:1" }))
            .expect("spec");
        let mut grid = DeviceGrid::new("fleet", spec);
        grid.metadata.namespace = Some("iot".into());
        grid.metadata.generation = Some(4);
        let sts = StatefulSet {
            status: Some(StatefulSetStatus {
                replicas: 3,
                ready_replicas: Some(3),
                ..StatefulSetStatus::default()
            }),
            ..StatefulSet::default()
        };
        let view = ClusterView {
            cluster_name: "fleet".into(),
            answered_by: 1,
            bootstrapped: true,
            epoch: 12,
            members: (1..=3).map(|id| member(id, MemberState::Active)).collect(),
            partitions: PartitionsView {
                count: 271,
                replication_factor: 3,
                under_replicated: 0,
                without_leader: 0,
            },
            balance: BalanceView {
                balanced: true,
                ..BalanceView::default()
            },
            moves: Vec::new(),
        };
        Fixture {
            grid,
            names: Names {
                grid: "fleet".into(),
                namespace: "iot".into(),
            },
            sts,
            view: Some(view),
            step: ScaleStep::Steady,
            refused: None,
            roll: Roll::default(),
        }
    }

    fn build(&self) -> DeviceGridStatus {
        build(&Observed {
            grid: &self.grid,
            names: &self.names,
            sts: &self.sts,
            view: self.view.as_ref(),
            step: &self.step,
            drain_refused: self.refused.as_deref(),
            roll: &self.roll,
        })
    }

    fn view(&mut self) -> &mut ClusterView {
        self.view.as_mut().expect("the case has a view")
    }

    fn ready(&mut self, ready: i32) {
        if let Some(s) = self.sts.status.as_mut() {
            s.ready_replicas = Some(ready);
        }
    }
}

/// A pass and the status it must produce.
struct Case {
    name: &'static str,
    given: fn(&mut Fixture),
    phase: Phase,
    /// (holds, reason) of `Available`, `Progressing`, `Rebalancing` and `Degraded`.
    conditions: [(bool, &'static str); 4],
    /// (condition type, message) when the message matters.
    message: Option<(&'static str, &'static str)>,
}

const TYPES: [&str; 4] = ["Available", "Progressing", "Rebalancing", "Degraded"];

const HEALTHY: (bool, &str) = (false, "Healthy");
const BALANCED: (bool, &str) = (false, "Balanced");
const AVAILABLE: (bool, &str) = (true, "PartitionsLed");
const STEADY: (bool, &str) = (false, "Steady");

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "ready",
            given: |_| {},
            phase: Phase::Running,
            conditions: [AVAILABLE, STEADY, BALANCED, HEALTHY],
            message: Some(("Available", "3 of 3 members ready")),
        },
        Case {
            name: "rebalancing",
            given: |f| {
                f.view().balance.balanced = false;
                f.view().balance.moves_in_progress = 7;
            },
            phase: Phase::Rebalancing,
            conditions: [AVAILABLE, STEADY, (true, "MovesInProgress"), HEALTHY],
            message: Some(("Rebalancing", "7 moves in progress")),
        },
        Case {
            name: "no pod ready yet",
            given: |f| {
                f.ready(0);
                f.view = None;
            },
            phase: Phase::Pending,
            conditions: [(false, "NotReady"), STEADY, BALANCED, HEALTHY],
            message: Some(("Rebalancing", "unknown")),
        },
        Case {
            name: "a partition without a leader",
            given: |f| f.view().partitions.without_leader = 1,
            phase: Phase::Running,
            conditions: [(false, "NotReady"), STEADY, BALANCED, HEALTHY],
            message: None,
        },
        Case {
            name: "scaling up",
            given: |f| f.step = ScaleStep::Grow { to: 5 },
            phase: Phase::Scaling,
            conditions: [AVAILABLE, (true, "ScalingUp"), BALANCED, HEALTHY],
            message: Some(("Progressing", "raising members to 5")),
        },
        Case {
            name: "draining",
            given: |f| f.step = ScaleStep::Drain { member: 3 },
            phase: Phase::Scaling,
            conditions: [AVAILABLE, (true, "Draining"), BALANCED, HEALTHY],
            message: Some(("Progressing", "draining member 3 before removing its pod")),
        },
        Case {
            name: "waiting for a drain",
            given: |f| {
                f.grid.spec.replicas = 2;
                f.step = ScaleStep::WaitForDrain {
                    member: 3,
                    left: 40,
                    stalled: false,
                };
                f.view().members[2].state = MemberState::Draining;
            },
            phase: Phase::Scaling,
            conditions: [AVAILABLE, (true, "Draining"), BALANCED, HEALTHY],
            message: Some(("Progressing", "member 3 is draining, 40 replicas left")),
        },
        Case {
            name: "drain refused",
            given: |f| {
                f.step = ScaleStep::Drain { member: 3 };
                f.refused = Some("too few members would be left".into());
            },
            phase: Phase::Degraded,
            conditions: [AVAILABLE, (true, "Draining"), BALANCED, (true, "DrainRefused")],
            message: Some(("Degraded", "too few members would be left")),
        },
        Case {
            name: "drain stalled",
            given: |f| {
                f.step = ScaleStep::WaitForDrain {
                    member: 3,
                    left: 40,
                    stalled: true,
                }
            },
            phase: Phase::Degraded,
            conditions: [AVAILABLE, (true, "Draining"), BALANCED, (true, "DrainStalled")],
            message: Some(("Degraded", "the drain has made no progress in time")),
        },
        Case {
            name: "shrinking",
            given: |f| f.step = ScaleStep::Shrink { member: 3, to: 2 },
            phase: Phase::Scaling,
            conditions: [AVAILABLE, (true, "ScalingDown"), BALANCED, HEALTHY],
            message: Some(("Progressing", "member 3 holds no replicas; shrinking to 2")),
        },
        Case {
            name: "member retired inside the desired size",
            given: |f| f.view().members[2].state = MemberState::Draining,
            phase: Phase::Degraded,
            conditions: [AVAILABLE, STEADY, BALANCED, (true, "MemberRetired")],
            message: Some((
                "Degraded",
                "member 3 is draining although the desired size includes it; it holds and takes no replicas",
            )),
        },
        Case {
            name: "member retired while growing",
            given: |f| {
                f.step = ScaleStep::Grow { to: 4 };
                f.view().members[1].state = MemberState::Decommissioned;
            },
            phase: Phase::Degraded,
            conditions: [AVAILABLE, (true, "ScalingUp"), BALANCED, (true, "MemberRetired")],
            message: None,
        },
        Case {
            name: "a retired member above the desired size is no cause",
            given: |f| {
                f.grid.spec.replicas = 2;
                f.view().members[2].state = MemberState::Decommissioned;
            },
            phase: Phase::Running,
            conditions: [AVAILABLE, STEADY, BALANCED, HEALTHY],
            message: None,
        },
        Case {
            name: "a retired member outranks under-replication",
            given: |f| {
                f.view().members[2].state = MemberState::Draining;
                f.view().partitions.under_replicated = 5;
            },
            phase: Phase::Degraded,
            conditions: [AVAILABLE, STEADY, BALANCED, (true, "MemberRetired")],
            message: None,
        },
        Case {
            name: "under-replicated",
            given: |f| f.view().partitions.under_replicated = 5,
            phase: Phase::Degraded,
            conditions: [AVAILABLE, STEADY, BALANCED, (true, "UnderReplicated")],
            message: Some(("Degraded", "5 partitions under-replicated")),
        },
        Case {
            name: "under-replicated during a roll is expected",
            given: |f| {
                f.view().partitions.under_replicated = 5;
                f.roll = Roll {
                    outdated: 2,
                    ..Roll::default()
                };
            },
            phase: Phase::Upgrading,
            conditions: [AVAILABLE, (true, "Rolling"), BALANCED, HEALTHY],
            message: None,
        },
        Case {
            name: "grid unreachable",
            given: |f| f.view = None,
            phase: Phase::Degraded,
            conditions: [(false, "NotReady"), STEADY, BALANCED, (true, "GridUnreachable")],
            message: Some(("Degraded", "the grid's admin API does not answer")),
        },
        Case {
            name: "grid unreachable while a member waits to be drained",
            given: |f| {
                f.view = None;
                f.step = ScaleStep::WaitForGrid { member: 3 };
            },
            phase: Phase::Degraded,
            conditions: [
                (false, "NotReady"),
                (true, "Draining"),
                BALANCED,
                (true, "GridUnreachable"),
            ],
            message: None,
        },
        Case {
            name: "new template not yet observed",
            given: |f| {
                f.roll = Roll {
                    unobserved: true,
                    ..Roll::default()
                }
            },
            phase: Phase::Scaling,
            conditions: [AVAILABLE, (true, "Updating"), BALANCED, HEALTHY],
            message: None,
        },
        Case {
            name: "rolling, a pod replaced",
            given: |f| {
                f.roll = Roll {
                    outdated: 2,
                    replaced: Some(2),
                    ..Roll::default()
                }
            },
            phase: Phase::Upgrading,
            conditions: [AVAILABLE, (true, "Rolling"), BALANCED, HEALTHY],
            message: Some((
                "Progressing",
                "replacing pod fleet-2; 2 pods on the old revision",
            )),
        },
        Case {
            name: "rolling, waiting for the grid",
            given: |f| {
                f.roll = Roll {
                    outdated: 1,
                    ..Roll::default()
                }
            },
            phase: Phase::Upgrading,
            conditions: [AVAILABLE, (true, "Rolling"), BALANCED, HEALTHY],
            message: Some((
                "Progressing",
                "1 pods on the old revision; the next is replaced once every pod is ready and every partition fully replicated",
            )),
        },
    ]
}

#[test]
fn every_pass_gets_its_phase_and_conditions() {
    for case in cases() {
        let mut f = Fixture::healthy();
        (case.given)(&mut f);
        let status = f.build();
        assert_eq!(
            status.phase.as_deref(),
            Some(case.phase.as_str()),
            "{}: phase",
            case.name
        );
        let got: Vec<(&str, bool, &str)> = status
            .conditions
            .iter()
            .map(|c| (c.type_.as_str(), c.status == "True", c.reason.as_str()))
            .collect();
        let want: Vec<(&str, bool, &str)> = TYPES
            .iter()
            .zip(case.conditions)
            .map(|(t, (holds, reason))| (*t, holds, reason))
            .collect();
        assert_eq!(got, want, "{}: conditions", case.name);
        if let Some((type_, message)) = case.message {
            let c = status.conditions.iter().find(|c| c.type_ == type_);
            assert_eq!(
                c.map(|c| c.message.as_str()),
                Some(message),
                "{}: {type_} message",
                case.name
            );
        }
    }
}

#[test]
fn the_grids_view_is_copied_into_the_status() {
    let mut f = Fixture::healthy();
    f.view().members[2] = MemberView {
        partitions_held: 12,
        partitions_led: 0,
        ready: false,
        ..member(3, MemberState::Draining)
    };
    f.view().balance.moves_in_progress = 4;
    f.view().partitions.under_replicated = 2;
    let status = f.build();
    assert_eq!(status.observed_generation, Some(4));
    assert_eq!((status.replicas, status.ready_replicas), (3, 3));
    assert_eq!(
        status.selector.as_deref(),
        Some(builders::selector_string(&f.names).as_str())
    );
    assert_eq!(
        status.members.last(),
        Some(&MemberStatus {
            id: 3,
            state: MemberState::Draining,
            ready: false,
            partitions_held: 12,
            partitions_led: 0,
        })
    );
    assert_eq!(
        status.partitions,
        Some(PartitionStatus {
            count: 271,
            under_replicated: 2,
            without_leader: 0,
            moves_in_progress: 4,
        })
    );
    f.view = None;
    let blind = f.build();
    assert!(blind.members.is_empty() && blind.partitions.is_none());
}

#[test]
fn transition_times_move_only_when_status_or_reason_does() {
    let mut f = Fixture::healthy();
    let long_ago = Time(Timestamp::from_second(1_700_000_000).expect("time"));
    let mut old = f.build();
    for c in &mut old.conditions {
        c.last_transition_time = long_ago.clone();
    }
    f.grid.status = Some(old);
    f.view().partitions.under_replicated = 3;
    let status = f.build();
    let since = |t: &str| {
        status
            .conditions
            .iter()
            .find(|c| c.type_ == t)
            .map(|c| c.last_transition_time.clone())
    };
    assert_eq!(since("Available"), Some(long_ago.clone()), "unchanged");
    assert_ne!(since("Degraded"), Some(long_ago), "turned UnderReplicated");
}

#[test]
fn a_failed_pass_degrades_the_previous_status() {
    let f = Fixture::healthy();
    let old = f.build();
    let status = failed(&old, "kubernetes: forbidden".into());
    assert_eq!(status.phase.as_deref(), Some(Phase::Degraded.as_str()));
    let degraded: Vec<_> = status
        .conditions
        .iter()
        .filter(|c| c.type_ == "Degraded")
        .collect();
    assert_eq!(degraded.len(), 1, "replaced, not added");
    assert_eq!(
        (degraded[0].status.as_str(), degraded[0].reason.as_str()),
        ("True", "ReconcileFailed")
    );
    assert_eq!(degraded[0].message, "kubernetes: forbidden");
    assert_eq!(status.members, old.members, "the rest is kept");
    let first = failed(&DeviceGridStatus::default(), "grid: down".into());
    assert_eq!(first.conditions.len(), 1);
}

#[test]
fn headlines_name_the_most_urgent_cause() {
    let mut f = Fixture::healthy();
    let running = headline(&f.build());
    assert_eq!(
        running,
        Headline {
            warning: false,
            reason: "Running".into(),
            note: "3 of 3 members ready".into(),
        }
    );
    f.step = ScaleStep::Grow { to: 5 };
    let growing = headline(&f.build());
    assert_eq!(
        (growing.warning, growing.reason.as_str()),
        (false, "ScalingUp")
    );
    f.view().partitions.under_replicated = 1;
    let degraded = headline(&f.build());
    assert_eq!(
        (degraded.warning, degraded.reason.as_str()),
        (true, "UnderReplicated")
    );
}

#[test]
fn a_drain_is_timed_from_when_progressing_turned_draining() {
    let mut f = Fixture::healthy();
    let now = Timestamp::from_second(1_700_000_600).expect("time");
    assert_eq!(draining_for(&f.build(), now), None, "not draining");
    f.step = ScaleStep::Drain { member: 3 };
    let mut old = f.build();
    for c in &mut old.conditions {
        c.last_transition_time = Time(Timestamp::from_second(1_700_000_000).expect("time"));
    }
    assert_eq!(draining_for(&old, now), Some(Duration::from_secs(600)));
    let earlier = Timestamp::from_second(1_699_999_000).expect("time");
    assert_eq!(draining_for(&old, earlier), None, "clock behind the status");
}

#[test]
fn phases_read_back_as_written() {
    for phase in Phase::ALL {
        assert_eq!(Phase::parse(phase.as_str()), Some(phase));
    }
    assert_eq!(Phase::parse("running"), None);
}
