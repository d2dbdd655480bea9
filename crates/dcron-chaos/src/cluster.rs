//! Registry clusters a chaos run owns: a 3-member etcd cluster or a 3-server ZooKeeper
//! ensemble on loopback, whose members it kills (SIGKILL) and restarts on the same ports and
//! data, and whose leader it can find.
//!
//! Each member has its own data directory (on tmpfs when `/dev/shm` is writable, as
//! `scripts/services/etcd.sh` does: etcd syncs every write, and a busy disk makes requests time
//! out) and its own log file in the run's work directory. Every wait is bounded.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use dcron_core::{Error, Result};
use dcron_registry_etcd::{EtcdRegistry, EtcdRegistryConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::time::{sleep, Instant};

use crate::backend::Backend;

/// The number of members of a cluster: a majority survives the loss of any one.
pub const MEMBERS: usize = 3;

/// How long one probe of one member (a status request, a four-letter word) may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// What a member answers to a status probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// It leads the cluster.
    Leader,
    /// It follows a leader.
    Follower,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Leader => "leader",
            Role::Follower => "follower",
        })
    }
}

/// The ZooKeeper jar and the optional logging binding of the Debian package (as in
/// `scripts/services/zk.sh`).
const ZK_JAR: &str = "/usr/share/java/zookeeper.jar";
const SLF4J_SIMPLE_JAR: &str = "/usr/share/java/slf4j-simple.jar";

/// The ports of one member.
#[derive(Clone, Copy, Debug)]
struct Ports {
    /// Where clients connect.
    client: u16,
    /// etcd: the peer port; ZooKeeper: the quorum port.
    peer: u16,
    /// ZooKeeper: the leader-election port (unused for etcd).
    election: u16,
}

/// One member: its ports, directories and process when running.
#[derive(Debug)]
struct Member {
    ports: Ports,
    data: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// A registry cluster of [`MEMBERS`] members on `127.0.0.1`, owned by the run.
#[derive(Debug)]
pub struct Cluster {
    backend: Backend,
    members: Vec<Member>,
    /// Where the members' data lives (removed on drop).
    data_root: PathBuf,
    /// etcd's `--initial-cluster`: every member's `name=peer URL`.
    etcd_initial_cluster: String,
    token: String,
}

fn io(what: &str) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |e| Error::InvalidState(format!("{what}: {e}"))
}

/// `n` distinct free loopback ports (all bound at once so that they differ).
fn free_ports(n: usize) -> Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").map_err(io("free port")))
        .collect::<Result<Vec<_>>>()?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr().map_err(io("free port"))?.port()))
        .collect()
}

impl Cluster {
    /// Starts a cluster of `backend` (etcd or ZooKeeper), with logs under `work_dir`, and
    /// waits until it has a leader and every member answers.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for another backend; [`Error::InvalidState`] when the server
    /// binaries are missing or a directory cannot be made; [`Error::Unavailable`] when the
    /// cluster does not form within 90 s.
    pub async fn start(backend: Backend, work_dir: &Path) -> Result<Cluster> {
        if !matches!(backend, Backend::Etcd | Backend::Zk) {
            return Err(Error::InvalidArgument(format!(
                "--cluster is supported for etcd and zk only, not {backend}"
            )));
        }
        let id = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
        let shm = Path::new("/dev/shm");
        let data_root =
            if shm.is_dir() && std::fs::metadata(shm).is_ok_and(|m| !m.permissions().readonly()) {
                shm.join(format!("dcron-chaos-{backend}-{id}"))
            } else {
                work_dir.join(format!("{backend}-data"))
            };
        let ports = free_ports(3 * MEMBERS)?;
        let mut members = Vec::new();
        for i in 0..MEMBERS {
            let data = data_root.join(format!("m{i}"));
            std::fs::create_dir_all(&data).map_err(io("member data dir"))?;
            members.push(Member {
                ports: Ports {
                    client: ports[3 * i],
                    peer: ports[3 * i + 1],
                    election: ports[3 * i + 2],
                },
                data,
                log: work_dir.join(format!("{backend}-m{i}.log")),
                child: None,
            });
        }
        let etcd_initial_cluster = members
            .iter()
            .enumerate()
            .map(|(i, m)| format!("m{i}=http://127.0.0.1:{}", m.ports.peer))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = Cluster {
            backend,
            members,
            data_root,
            etcd_initial_cluster,
            token: format!("dcron-chaos-{id}"),
        };
        if backend == Backend::Zk {
            cluster.write_zk_config(work_dir)?;
        }
        for i in 0..MEMBERS {
            cluster.spawn(i)?;
        }
        cluster
            .wait_formed(Instant::now() + Duration::from_secs(90))
            .await?;
        Ok(cluster)
    }

    /// `zoo.cfg` (in the work directory) and `myid` (in the data directory) of every server.
    fn write_zk_config(&self, work_dir: &Path) -> Result<()> {
        let servers: String = self
            .members
            .iter()
            .enumerate()
            .map(|(i, m)| {
                format!(
                    "server.{}=127.0.0.1:{}:{}\n",
                    i + 1,
                    m.ports.peer,
                    m.ports.election
                )
            })
            .collect();
        for (i, m) in self.members.iter().enumerate() {
            // The settings of scripts/services/zk.sh (short sessions, TTL znodes, srvr allowed
            // for the leader probe), plus the ensemble.
            let cfg = format!(
                "tickTime=500\ninitLimit=10\nsyncLimit=5\ndataDir={data}\nclientPort={client}\n\
                 clientPortAddress=127.0.0.1\nminSessionTimeout=1000\nmaxSessionTimeout=60000\n\
                 maxClientCnxns=0\nextendedTypesEnabled=true\nadmin.enableServer=false\n\
                 4lw.commands.whitelist=ruok,srvr\n{servers}",
                data = m.data.display(),
                client = m.ports.client,
            );
            std::fs::write(work_dir.join(format!("zoo-m{i}.cfg")), cfg).map_err(io("zoo.cfg"))?;
            std::fs::write(m.data.join("myid"), format!("{}\n", i + 1)).map_err(io("myid"))?;
        }
        Ok(())
    }

    /// `127.0.0.1:<client port>` of every member, in member order.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("127.0.0.1:{}", m.ports.client))
            .collect()
    }

    /// The number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether the cluster has no member (never, once started).
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Whether member `i`'s process runs (it was not killed, or was restarted since).
    pub fn is_running(&self, i: usize) -> bool {
        self.members.get(i).is_some_and(|m| m.child.is_some())
    }

    /// Starts member `i` on its ports and data (does not wait for it).
    ///
    /// # Errors
    /// [`Error::InvalidState`] when the process cannot be started.
    pub fn spawn(&mut self, i: usize) -> Result<()> {
        let backend = self.backend;
        let initial_cluster = self.etcd_initial_cluster.clone();
        let token = self.token.clone();
        let Some(m) = self.members.get_mut(i) else {
            return Err(Error::InvalidArgument(format!("no member {i}")));
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&m.log)
            .map_err(io("member log"))?;
        let mut cmd = match backend {
            Backend::Etcd => {
                let bin = std::env::var_os("DCRON_TEST_ETCD_BIN").unwrap_or_else(|| "etcd".into());
                let client = format!("http://127.0.0.1:{}", m.ports.client);
                let peer = format!("http://127.0.0.1:{}", m.ports.peer);
                let mut c = Command::new(bin);
                c.args(["--name", &format!("m{i}")])
                    .arg("--data-dir")
                    .arg(&m.data)
                    .args(["--listen-client-urls", &client])
                    .args(["--advertise-client-urls", &client])
                    .args(["--listen-peer-urls", &peer])
                    .args(["--initial-advertise-peer-urls", &peer])
                    .args(["--initial-cluster", &initial_cluster])
                    .args(["--initial-cluster-state", "new"])
                    .args(["--initial-cluster-token", &token]);
                c
            }
            _ => {
                if !Path::new(ZK_JAR).is_file() {
                    return Err(Error::InvalidState(format!(
                        "{ZK_JAR} not found: install ZooKeeper with `bash scripts/services/zk.sh`"
                    )));
                }
                let mut cp = ZK_JAR.to_string();
                if Path::new(SLF4J_SIMPLE_JAR).is_file() {
                    cp = format!("{cp}:{SLF4J_SIMPLE_JAR}");
                }
                let cfg = m
                    .log
                    .with_file_name(format!("zoo-m{i}.cfg"))
                    .to_string_lossy()
                    .to_string();
                let mut c = Command::new("java");
                c.args([
                    "-Xmx256m",
                    "-XX:+UseSerialGC",
                    "-Dzookeeper.jmx.log4j.disable=true",
                    "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn",
                    "-cp",
                    &cp,
                    "org.apache.zookeeper.server.quorum.QuorumPeerMain",
                    &cfg,
                ]);
                c
            }
        };
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().map_err(io("member log"))?))
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .map_err(io("cannot start a cluster member"))?;
        m.child = Some(child);
        Ok(())
    }

    /// SIGKILLs member `i` and waits (up to 10 s) for it to die.
    pub async fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members.get_mut(i).and_then(|m| m.child.take()) {
            let _ = c.start_kill();
            let _ = tokio::time::timeout(Duration::from_secs(10), c.wait()).await;
        }
    }

    /// What member `i` says it is, or `None` when it is down, does not answer within the
    /// probe timeout, or has no leader.
    pub async fn role(&self, i: usize) -> Option<Role> {
        if !self.is_running(i) {
            return None;
        }
        let endpoint = self.endpoints().get(i)?.clone();
        tokio::time::timeout(PROBE_TIMEOUT, async {
            match self.backend {
                Backend::Etcd => etcd_role(&endpoint).await,
                _ => zk_role(&endpoint).await,
            }
        })
        .await
        .ok()
        .flatten()
    }

    /// Every member's role, probed concurrently.
    pub async fn roles(&self) -> Vec<Option<Role>> {
        futures::future::join_all((0..self.members.len()).map(|i| self.role(i))).await
    }

    /// The member that leads, when exactly one running member says it does and every other
    /// running member follows.
    pub async fn leader(&self) -> Option<usize> {
        let roles = self.roles().await;
        let leaders: Vec<usize> = (0..roles.len())
            .filter(|i| roles[*i] == Some(Role::Leader))
            .collect();
        let all_answer = (0..roles.len()).all(|i| !self.is_running(i) || roles[i].is_some());
        (leaders.len() == 1 && all_answer).then(|| leaders[0])
    }

    /// Whether every member runs and answers, one of them as the leader.
    pub async fn healthy(&self) -> bool {
        (0..self.members.len()).all(|i| self.is_running(i)) && self.leader().await.is_some()
    }

    /// Polls until [`Cluster::healthy`], or fails at `deadline`.
    ///
    /// # Errors
    /// [`Error::Unavailable`] naming each member's last role when the deadline passes.
    pub async fn wait_formed(&self, deadline: Instant) -> Result<()> {
        loop {
            if self.healthy().await {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let roles = self.roles().await;
                return Err(Error::unavailable(format!(
                    "the {} cluster did not form (member roles {roles:?}); see the member logs",
                    self.backend
                )));
            }
            sleep(Duration::from_millis(250)).await;
        }
    }

    /// Kills every member.
    pub async fn stop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i).await;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            if let Some(c) = m.child.as_mut() {
                let _ = c.start_kill();
            }
        }
        let _ = std::fs::remove_dir_all(&self.data_root);
    }
}

/// An etcd member's role from its maintenance status: it leads when the leader it reports is
/// itself.
async fn etcd_role(endpoint: &str) -> Option<Role> {
    let config = EtcdRegistryConfig::new([format!("http://{endpoint}")])
        .namespace("dcron-chaos-probe")
        .connect_timeout(Duration::from_secs(1))
        .request_timeout(Duration::from_secs(2));
    let registry = EtcdRegistry::connect(config).await.ok()?;
    let status = registry.client().clone().status().await.ok()?;
    let me = status.header()?.member_id();
    match status.leader() {
        0 => None,
        l if l == me => Some(Role::Leader),
        _ => Some(Role::Follower),
    }
}

/// A ZooKeeper server's role from the `srvr` four-letter word (`Mode: leader|follower`).
async fn zk_role(endpoint: &str) -> Option<Role> {
    let mut s = TcpStream::connect(endpoint).await.ok()?;
    s.write_all(b"srvr").await.ok()?;
    let mut reply = String::new();
    s.read_to_string(&mut reply).await.ok()?;
    parse_zk_mode(&reply)
}

/// The role in a `srvr` reply.
fn parse_zk_mode(reply: &str) -> Option<Role> {
    reply
        .lines()
        .find_map(|l| l.strip_prefix("Mode:"))
        .and_then(|mode| match mode.trim() {
            "leader" => Some(Role::Leader),
            "follower" => Some(Role::Follower),
            _ => None,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zk_modes_parse() {
        let reply =
            "Zookeeper version: 3.8.0\nLatency min/avg/max: 0/0.0/0\nMode: leader\nNode count: 5\n";
        assert_eq!(parse_zk_mode(reply), Some(Role::Leader));
        assert_eq!(parse_zk_mode("Mode: follower\n"), Some(Role::Follower));
        assert_eq!(parse_zk_mode("Mode: standalone\n"), None);
        assert_eq!(
            parse_zk_mode("This ZooKeeper instance is not currently serving requests\n"),
            None
        );
    }
}
