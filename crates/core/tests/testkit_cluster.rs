//! The testkit's Redis Cluster: it forms with three primaries and three replicas, a replica
//! takes over on `CLUSTER FAILOVER`, and a killed primary is replaced by its replica.
use std::time::{Duration, Instant};

use pipeline_core::testkit::{ClusterRole, RedisCluster};

#[test]
fn a_cluster_forms_fails_over_and_replaces_a_killed_primary() {
    let started = Instant::now();
    let Some(mut cluster) = RedisCluster::start().unwrap_or_else(|e| panic!("{e}")) else {
        return;
    };
    eprintln!("cluster of 6 nodes ready in {:?}", started.elapsed());
    let primaries = cluster.primaries().unwrap();
    let replicas = cluster.replicas().unwrap();
    assert_eq!((primaries.len(), replicas.len()), (3, 3));
    assert_eq!(cluster.seed_urls().len(), 6);
    for port in cluster.live_ports() {
        assert!(cluster.pid(port).is_some());
    }

    let promoted = replicas[0];
    cluster.failover(promoted).unwrap();
    assert_eq!(RedisCluster::role(promoted).unwrap(), ClusterRole::Primary);
    assert_eq!(cluster.primaries().unwrap().len(), 3);

    cluster
        .wait_until_replicas_synced(Duration::from_secs(30))
        .unwrap();
    let killed = cluster.primaries().unwrap()[0];
    let since = Instant::now();
    cluster.kill(killed).unwrap();
    assert!(cluster.pid(killed).is_none());
    assert_eq!(cluster.seed_urls().len(), 5);
    // Its replica takes over: three primaries again among the five live nodes, all ok.
    let deadline = Instant::now() + Duration::from_secs(30);
    while cluster.primaries().unwrap().len() != 3 {
        assert!(
            Instant::now() < deadline,
            "no replica took over from {killed}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    cluster.wait_until_ok(Duration::from_secs(30)).unwrap();
    eprintln!("killed primary replaced in {:?}", since.elapsed());
}
