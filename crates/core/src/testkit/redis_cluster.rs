//! A private Redis Cluster: three primaries with one replica each.
//!
//! [`RedisCluster::start`] runs six `redis-server --cluster-enabled yes` on free ports in one
//! temp dir (no persistence, `cluster-node-timeout` 1000 ms so a killed primary is replaced
//! within seconds), joins them with `redis-cli --cluster create … --cluster-replicas 1`, and
//! returns once every node reports `cluster_state:ok` and every replica is in sync. A test
//! can then kill a node or make a replica take over. Every process dies with the value.
//! Skipped like [`super::RedisServer`] where `redis-server` or `redis-cli` is not installed
//! (an error under `CI=true`).

use std::net::{Ipv4Addr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::redis_server::{installed, ping};

/// Nodes of the cluster: three primaries, three replicas.
const NODES: usize = 6;

/// How long the cluster may take to form, and a failover to complete.
const DEADLINE: Duration = Duration::from_secs(30);

/// `cluster-node-timeout`: how long a node may be unreachable before it counts as failed.
const NODE_TIMEOUT_MS: u64 = 1000;

/// One node: its client port, its cluster-bus port and its process (`None` once killed).
struct Node {
    port: u16,
    bus_port: u16,
    child: Option<Child>,
}

/// A running 3+3 Redis Cluster owned by a test.
pub struct RedisCluster {
    nodes: Vec<Node>,
    /// Each node's working directory (its `nodes.conf`); removed after the nodes are gone.
    _dir: tempfile::TempDir,
}

/// A node's role as it reports it (`ROLE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterRole {
    Primary,
    Replica,
}

impl RedisCluster {
    /// Starts the six nodes, creates the cluster and waits until every node reports
    /// `cluster_state:ok`. `Ok(None)` (after printing why) when `redis-server` or `redis-cli`
    /// is not installed, unless `CI` is `true`: then an `Err`.
    pub fn start() -> Result<Option<RedisCluster>, String> {
        if !installed("redis-server")? || !installed("redis-cli")? {
            return Ok(None);
        }
        // A port may be taken between the probe and the bind; then start over on new ports.
        let mut last_error = String::new();
        for _ in 0..3 {
            match Self::try_start() {
                Ok(cluster) => return Ok(Some(cluster)),
                Err(e) => last_error = e,
            }
        }
        Err(format!("redis cluster did not start: {last_error}"))
    }

    fn try_start() -> Result<RedisCluster, String> {
        let dir = tempfile::tempdir().map_err(|e| format!("temp dir for redis cluster: {e}"))?;
        let ports = distinct_free_ports(2 * NODES)?;
        let mut cluster = RedisCluster {
            nodes: ports
                .chunks(2)
                .map(|p| Node {
                    port: p[0],
                    bus_port: p[1],
                    child: None,
                })
                .collect(),
            _dir: dir,
        };
        for i in 0..NODES {
            let node_dir = cluster._dir.path().join(format!("node{i}"));
            std::fs::create_dir(&node_dir)
                .map_err(|e| format!("cannot create {}: {e}", node_dir.display()))?;
            let node = &mut cluster.nodes[i];
            node.child = Some(spawn_node(&node_dir, node.port, node.bus_port)?);
        }
        let deadline = Instant::now() + DEADLINE;
        for node in &mut cluster.nodes {
            while !ping(node.port) {
                if let Some(child) = node.child.as_mut() {
                    if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
                        return Err(format!(
                            "cluster node on port {} exited at start ({status})",
                            node.port
                        ));
                    }
                }
                if Instant::now() >= deadline {
                    return Err(format!(
                        "cluster node on port {} did not answer PING within {DEADLINE:?}",
                        node.port
                    ));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let addresses: Vec<String> = cluster
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run redis-cli --cluster create: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "redis-cli --cluster create failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stdout).trim()
            ));
        }
        cluster.wait_until_ok(DEADLINE)?;
        cluster.wait_until_replicas_synced(DEADLINE)?;
        Ok(cluster)
    }

    /// `redis://127.0.0.1:<port>/` of every live node, for a cluster client's seed list.
    pub fn seed_urls(&self) -> Vec<String> {
        self.live_ports()
            .into_iter()
            .map(|p| format!("redis://127.0.0.1:{p}/"))
            .collect()
    }

    /// Client ports of the nodes not killed.
    pub fn live_ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| n.port)
            .collect()
    }

    /// Ports of the live nodes that now report themselves as primaries.
    pub fn primaries(&self) -> Result<Vec<u16>, String> {
        self.with_role(ClusterRole::Primary)
    }

    /// Ports of the live nodes that now report themselves as replicas.
    pub fn replicas(&self) -> Result<Vec<u16>, String> {
        self.with_role(ClusterRole::Replica)
    }

    fn with_role(&self, role: ClusterRole) -> Result<Vec<u16>, String> {
        let mut ports = Vec::new();
        for port in self.live_ports() {
            if Self::role(port)? == role {
                ports.push(port);
            }
        }
        Ok(ports)
    }

    /// The role the node on `port` reports (`ROLE`).
    pub fn role(port: u16) -> Result<ClusterRole, String> {
        let out = cli(port, &["ROLE"])?;
        match out.lines().next().map(str::trim) {
            Some("master") => Ok(ClusterRole::Primary),
            Some("slave") => Ok(ClusterRole::Replica),
            other => Err(format!(
                "node on port {port}: unexpected ROLE reply {other:?}"
            )),
        }
    }

    /// The process id of the node on `port`, while it runs.
    pub fn pid(&self, port: u16) -> Option<u32> {
        self.node(port)
            .and_then(|n| n.child.as_ref())
            .map(Child::id)
    }

    /// Kills the node on `port` (SIGKILL) and waits for it to exit. Its replica takes over
    /// after about `cluster-node-timeout`; see [`wait_until_ok`](Self::wait_until_ok).
    pub fn kill(&mut self, port: u16) -> Result<(), String> {
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.port == port)
            .ok_or_else(|| format!("no cluster node on port {port}"))?;
        let mut child = node
            .child
            .take()
            .ok_or_else(|| format!("cluster node on port {port} is not running"))?;
        child
            .kill()
            .map_err(|e| format!("cannot kill cluster node on port {port}: {e}"))?;
        let _ = child.wait();
        Ok(())
    }

    /// Starts the node on `port` again after [`kill`](Self::kill), from its `nodes.conf` and
    /// with no data: it rejoins the cluster as a replica of whichever node took over its slots,
    /// so every primary has a replica again. Returns once the cluster is ok and every replica
    /// is in sync.
    pub fn restart(&mut self, port: u16) -> Result<(), String> {
        let index = self
            .nodes
            .iter()
            .position(|n| n.port == port)
            .ok_or_else(|| format!("no cluster node on port {port}"))?;
        let node_dir = self._dir.path().join(format!("node{index}"));
        let node = &mut self.nodes[index];
        if node.child.is_some() {
            return Err(format!("cluster node on port {port} is still running"));
        }
        node.child = Some(spawn_node(&node_dir, node.port, node.bus_port)?);
        let deadline = Instant::now() + DEADLINE;
        while !ping(port) || Self::role(port).ok() != Some(ClusterRole::Replica) {
            if Instant::now() >= deadline {
                return Err(format!(
                    "restarted node on port {port} did not rejoin as a replica within {DEADLINE:?}"
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.wait_until_ok(DEADLINE)?;
        self.wait_until_replicas_synced(DEADLINE)
    }

    /// What `redis-cli` prints for `args` sent to the node on `port` (e.g. `INFO stats`).
    pub fn cli(&self, port: u16, args: &[&str]) -> Result<String, String> {
        cli(port, args)
    }

    /// Runs `CLUSTER FAILOVER` on the replica on `port` (a coordinated takeover, no data lost)
    /// and waits until it reports itself as a primary, its old primary as a replica, and the
    /// cluster is ok.
    pub fn failover(&self, replica_port: u16) -> Result<(), String> {
        let primaries = self.primaries()?.len();
        let reply = cli(replica_port, &["CLUSTER", "FAILOVER"])?;
        if reply.trim() != "OK" {
            return Err(format!(
                "CLUSTER FAILOVER on port {replica_port}: {}",
                reply.trim()
            ));
        }
        let deadline = Instant::now() + DEADLINE;
        // Promoted, and its old primary has turned into a replica.
        while Self::role(replica_port)? != ClusterRole::Primary
            || self.primaries()?.len() > primaries
        {
            if Instant::now() >= deadline {
                return Err(format!(
                    "replica on port {replica_port} did not take over within {DEADLINE:?}"
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.wait_until_ok(DEADLINE)
    }

    /// Waits until every live node reports `cluster_state:ok` (`CLUSTER INFO`), polling.
    pub fn wait_until_ok(&self, within: Duration) -> Result<(), String> {
        let deadline = Instant::now() + within;
        loop {
            let mut not_ok = None;
            for port in self.live_ports() {
                let info = cli(port, &["CLUSTER", "INFO"]).unwrap_or_default();
                if !info.lines().any(|l| l.trim() == "cluster_state:ok") {
                    not_ok = Some(port);
                    break;
                }
            }
            let Some(port) = not_ok else {
                return Ok(());
            };
            if Instant::now() >= deadline {
                return Err(format!(
                    "cluster node on port {port} not in cluster_state:ok within {within:?}"
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until every live replica reports `master_link_status:up`: it holds a copy of its
    /// primary and can take over.
    pub fn wait_until_replicas_synced(&self, within: Duration) -> Result<(), String> {
        let deadline = Instant::now() + within;
        for port in self.replicas()? {
            loop {
                let info = cli(port, &["INFO", "replication"]).unwrap_or_default();
                if info.lines().any(|l| l.trim() == "master_link_status:up") {
                    break;
                }
                if Instant::now() >= deadline {
                    return Err(format!(
                        "replica on port {port} not in sync with its primary within {within:?}"
                    ));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(())
    }

    fn node(&self, port: u16) -> Option<&Node> {
        self.nodes.iter().find(|n| n.port == port)
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

fn spawn_node(dir: &Path, port: u16, bus_port: u16) -> Result<Child, String> {
    Command::new("redis-server")
        .arg("--port")
        .arg(port.to_string())
        .arg("--cluster-port")
        .arg(bus_port.to_string())
        .args(["--bind", "127.0.0.1", "--cluster-enabled", "yes"])
        .arg("--cluster-node-timeout")
        .arg(NODE_TIMEOUT_MS.to_string())
        .args(["--cluster-config-file", "nodes.conf"])
        // A replica copies its primary at once, and may take over however long it was cut
        // off, so a kill right after the start still gets a replacement.
        .args(["--repl-diskless-sync-delay", "0"])
        .args(["--cluster-replica-validity-factor", "0"])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start redis-server: {e}"))
}

/// `n` different ports that were free a moment ago (all probed at once, so no two are equal;
/// the cluster bus port cannot simply be `port + 10000`, which may not exist).
fn distinct_free_ports(n: usize) -> Result<Vec<u16>, String> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("no free port for the cluster: {e}"))?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("no free port for the cluster: {e}"))
}

/// `redis-cli -p <port> <args…>`, its output; an `Err` when it cannot run or fails.
fn cli(port: u16, args: &[&str]) -> Result<String, String> {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p"])
        .arg(port.to_string())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run redis-cli: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "redis-cli -p {port} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
