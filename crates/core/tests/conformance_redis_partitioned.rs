//! The backend conformance suite on a queue split into partitions: four on one server (each
//! test its own `redis-server`), and sixteen on a real Redis Cluster of three primaries and
//! three replicas (one cluster for every case, run in turn).
mod common;

use common::conformance::backend_conformance;
use pipeline_core::config::RedisMode;
use pipeline_core::testkit::{RedisCluster, RedisServer};

mod standalone {
    use super::*;

    type Harness = crate::common::redis_harness::RedisHarness<RedisServer>;

    /// `None` (the test is skipped) when redis-server is not installed and CI is not set.
    fn start() -> Option<Harness> {
        let server = RedisServer::start().unwrap_or_else(|e| panic!("{e}"))?;
        let url = server.url();
        Some(Harness::with_layout(
            server,
            url,
            Default::default(),
            RedisMode::Standalone,
            4,
        ))
    }

    backend_conformance!(match start() {
        Some(h) => h,
        None => return,
    });
}

mod cluster {
    use super::*;

    type Harness = crate::common::redis_harness::RedisHarness<RedisCluster>;

    fn start() -> Option<Harness> {
        let cluster = RedisCluster::start().unwrap_or_else(|e| panic!("{e}"))?;
        let url = cluster.seed_urls().join(",");
        Some(Harness::with_layout(
            cluster,
            url,
            Default::default(),
            RedisMode::Cluster,
            16,
        ))
    }

    backend_conformance!(in_one_test conformance_on_a_cluster_with_16_partitions, match start() {
        Some(h) => h,
        None => return,
    });
}

/// The partition count is recorded with the data: a process configured with another count
/// is refused with one sentence naming both (a configuration error, exit status 2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_partition_count_is_refused_naming_both() {
    use pipeline_core::backend::redis::RedisBackend;
    use pipeline_core::backend::{BackendError, BackendOptions};
    use pipeline_core::config::RedisConfig;

    let Some(server) = RedisServer::start().unwrap_or_else(|e| panic!("{e}")) else {
        return;
    };
    let config = |partitions| RedisConfig {
        url: server.url(),
        mode: RedisMode::Standalone,
        key_prefix: "counted".into(),
        partitions,
        wait_replicas: 0,
        wait_timeout: std::time::Duration::from_millis(100),
        tls: Default::default(),
    };
    RedisBackend::open(&config(4), BackendOptions::default())
        .await
        .unwrap();
    let refused = RedisBackend::open(&config(8), BackendOptions::default()).await;
    let Err(e) = refused else {
        panic!("a second partition count must be refused");
    };
    assert!(matches!(e, BackendError::Misconfigured(_)), "{e:?}");
    assert_eq!(e.exit_status(), 2);
    let message = e.to_string();
    assert!(
        message.contains("in 4 partition(s)") && message.contains("DAY15_REDIS_PARTITIONS is 8"),
        "{message}"
    );
    // The recorded count still opens.
    RedisBackend::open(&config(4), BackendOptions::default())
        .await
        .unwrap();
}
