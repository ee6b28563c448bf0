//! Network partitions between member processes on loopback.
//!
//! Every member advertises a proxy port instead of its own, so all peer traffic (Raft,
//! pings, forwarded requests) goes through [`FaultNet`]; clients still reach members
//! directly. Each member sends its peer traffic from its own loopback source address
//! (`--peer-source-ip 127.A.B.<id>`), so the proxy knows who is calling. Isolating a member
//! refuses new connections from and to it and cuts the open ones.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

struct State {
    isolated: BTreeSet<u64>,
    /// Open connections: (calling member or 0 for others, called member, copier task).
    conns: Vec<(u64, u64, AbortHandle)>,
}

/// The proxies in front of every member's peer endpoint.
pub struct FaultNet {
    runtime: Option<tokio::runtime::Runtime>,
    state: Arc<Mutex<State>>,
    prefix: [u8; 2],
}

impl FaultNet {
    /// Proxies on their own runtime thread (the test's runtime may be single-threaded).
    pub fn new() -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("proxy runtime");
        // A source address range of this run's own, so parallel runs cannot mix.
        let salt = std::process::id();
        FaultNet {
            runtime: Some(runtime),
            state: Arc::new(Mutex::new(State {
                isolated: BTreeSet::new(),
                conns: Vec::new(),
            })),
            prefix: [(salt % 250) as u8 + 2, ((salt / 250) % 250) as u8 + 2],
        }
    }

    /// The source address member `id` sends peer traffic from.
    pub fn source_ip(&self, id: u64) -> Ipv4Addr {
        Ipv4Addr::new(127, self.prefix[0], self.prefix[1], id as u8)
    }

    fn member_of(&self, ip: IpAddr) -> u64 {
        match ip {
            IpAddr::V4(v4) if v4.octets()[1..3] == self.prefix => u64::from(v4.octets()[3]),
            _ => 0,
        }
    }

    /// Starts a proxy for member `id`, whose own endpoint is `127.0.0.1:target`; returns
    /// the proxy's port (the member's advertised address).
    pub fn proxy(&self, id: u64, target: u16) -> u16 {
        let runtime = self.runtime.as_ref().expect("runtime");
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        std_listener.set_nonblocking(true).expect("nonblocking");
        let port = std_listener.local_addr().expect("addr").port();
        let listener = {
            let _entered = runtime.enter();
            TcpListener::from_std(std_listener).expect("proxy listener")
        };
        let state = self.state.clone();
        let prefix = self.prefix;
        let me = FaultNet {
            runtime: None,
            state: state.clone(),
            prefix,
        };
        runtime.spawn(async move {
            loop {
                let Ok((inbound, from)) = listener.accept().await else {
                    continue;
                };
                let caller = me.member_of(from.ip());
                let mut st = state.lock().expect("state");
                if st.isolated.contains(&caller) || st.isolated.contains(&id) {
                    continue; // dropped: the caller sees a reset
                }
                st.conns.retain(|(_, _, h)| !h.is_finished());
                let task = tokio::spawn(pipe(inbound, SocketAddr::from(([127, 0, 0, 1], target))));
                st.conns.push((caller, id, task.abort_handle()));
            }
        });
        port
    }

    /// Cuts member `id` off from every other member until [`Self::heal`].
    pub fn isolate(&self, id: u64) {
        let mut st = self.state.lock().expect("state");
        st.isolated.insert(id);
        for (from, to, h) in &st.conns {
            if *from == id || *to == id {
                h.abort();
            }
        }
    }

    /// Ends every partition.
    pub fn heal(&self) {
        self.state.lock().expect("state").isolated.clear();
    }
}

async fn pipe(mut inbound: TcpStream, target: SocketAddr) {
    if let Ok(mut outbound) = TcpStream::connect(target).await {
        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
    }
}

impl Drop for FaultNet {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}
