//! Diagnostics printed when a step fails: the grid, its pods and volumes, recent events, and
//! log excerpts of the operator and of every member (the previous container too, when one
//! restarted).

use crate::settings::Settings;
use crate::tools::{kubectl, run};

/// Where to look.
#[derive(Clone)]
pub struct Diag {
    /// Settings (kubectl).
    pub settings: Settings,
    /// The grid's namespace.
    pub namespace: String,
    /// The operator's namespace.
    pub operator_namespace: String,
    /// The grid's name (its client Service).
    pub grid: String,
}

impl Diag {
    /// Everything worth reading after a failure; never fails itself.
    pub async fn report(&self) -> String {
        let ns = self.namespace.as_str();
        let op = self.operator_namespace.as_str();
        let mut out = String::from("\n===== diagnostics =====\n");
        let deploy = "deploy/devicegrid-operator";
        let sections: Vec<(&str, Vec<&str>)> = vec![
            (
                "DeviceGrids",
                vec!["get", "devicegrids", "-n", ns, "-o", "yaml"],
            ),
            ("pods", vec!["get", "pods", "-n", ns, "-o", "wide"]),
            ("volumes", vec!["get", "pvc,pv", "-n", ns]),
            (
                "StatefulSets",
                vec!["get", "statefulsets", "-n", ns, "-o", "yaml"],
            ),
            (
                "events",
                vec![
                    "get",
                    "events",
                    "-n",
                    ns,
                    "--sort-by=.metadata.creationTimestamp",
                ],
            ),
            ("operator pods", vec!["get", "pods", "-n", op, "-o", "wide"]),
            (
                "leader Lease",
                vec!["get", "leases", "-n", op, "-o", "yaml"],
            ),
            ("operator log", vec!["logs", "-n", op, deploy, "--tail=200"]),
            (
                "operator log, previous container",
                vec!["logs", "-n", op, deploy, "--previous", "--tail=60"],
            ),
        ];
        for (title, args) in sections {
            out.push_str(&format!("--- {title}: kubectl {} ---\n", args.join(" ")));
            out.push_str(&self.kubectl(&args).await);
        }
        let pods = self.kubectl(&["get", "pods", "-n", ns, "-o", "name"]).await;
        for pod in pods.lines().filter(|l| l.starts_with("pod/")) {
            for previous in [false, true] {
                let mut args = vec!["logs", "-n", ns, pod, "--tail=40"];
                if previous {
                    args.push("--previous");
                }
                let text = self.kubectl(&args).await;
                if previous && text.contains("not found") {
                    continue;
                }
                let which = if previous {
                    " (previous container)"
                } else {
                    ""
                };
                out.push_str(&format!("--- log of {pod}{which} ---\n{text}"));
            }
        }
        out
    }

    async fn kubectl(&self, args: &[&str]) -> String {
        let strings: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        match run(
            &self.settings.kubectl,
            &strings,
            None,
            std::time::Duration::from_secs(20),
        )
        .await
        {
            Ok(o) => format!("{}{}", o.stdout, o.stderr),
            Err(e) => format!("({e:#})\n"),
        }
    }
}

/// kubectl output or the error as text (for messages).
pub async fn show(settings: &Settings, args: &[&str]) -> String {
    kubectl(settings, args)
        .await
        .unwrap_or_else(|e| format!("{e:#}"))
}
