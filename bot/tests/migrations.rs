//! `lattice-bot migrate` against a real Postgres, and the guard that released migrations never change.

mod common;

use common::*;

fn text(out: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// SHA-384 (sqlx's checksum) of every released migration. A released file must never change:
/// databases that applied it would refuse to migrate. Add a new migration instead, and its line here.
const RELEASED: &[(i64, &str)] = &[
    (1, "43e5452171e057d2988ea495ecdfd8633f307e18f6ef2933fac5d7ec971ceab052e9102239882bee582c1703bf646202"),
    (2, "ed8189e13181b3d022b32f2b187e76cfd6644f440f975e7dc30d038b88a3b397bbcc092458067ec45814fa2263cf3168"),
    (3, "cf0d02f06fe6ad9f337c6d30c131a1cc62eb35c51d6de83e0c9f882b2f5b811728939f382595bdf7a68b169e8c5dfc23"),
    (4, "0ec404bcbbf7aa5775e329c9765a1fe7a59186374b04dde3ff352a8dfb3ef46135cd10f492467cb1fb92b5cdf7efba74"),
];

#[test]
fn released_migrations_never_change() {
    let embedded: Vec<(i64, String)> = lattice_bot::db::MIGRATOR
        .iter()
        .map(|m| (m.version, m.checksum.iter().map(|b| format!("{b:02x}")).collect()))
        .collect();
    for (version, checksum) in RELEASED {
        let found = embedded.iter().find(|(v, _)| v == version);
        assert_eq!(
            found.map(|(_, c)| c.as_str()),
            Some(*checksum),
            "migration {version} was released and must not change (or disappear): add a new migration instead"
        );
    }
    let unlisted: Vec<i64> =
        embedded.iter().map(|(v, _)| *v).filter(|v| !RELEASED.iter().any(|(r, _)| r == v)).collect();
    assert!(
        unlisted.is_empty() || unlisted.iter().all(|v| *v > RELEASED.last().unwrap().0),
        "new migrations must come after released ones: {unlisted:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_is_idempotent_and_prints_what_it_applied() {
    let pg = Postgres::start().await;
    let first = pg.migrate();
    assert!(first.status.success(), "{}", text(&first));
    let out = String::from_utf8_lossy(&first.stdout).into_owned();
    assert!(
        out.contains("applied 0001 init")
            && out.contains("applied 0002 gateway session")
            && out.contains("applied 0003 message kind")
            && out.contains("applied 0004 reply leases")
            && out.contains("applied 0005 shards"),
        "{out}"
    );
    let second = pg.migrate();
    assert!(second.status.success(), "{}", text(&second));
    assert_eq!(String::from_utf8_lossy(&second.stdout).trim(), "up to date at 5");
    assert!(!text(&first).contains(PG_PASSWORD));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_concurrent_migrates_apply_each_migration_once() {
    let pg = Postgres::start().await;
    let spawn = || {
        std::process::Command::new(BIN)
            .arg("migrate")
            .env_clear()
            .env("DATABASE_URL", pg.url())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert!(a.status.success(), "{}", text(&a));
    assert!(b.status.success(), "{}", text(&b));
    let both = format!("{}{}", String::from_utf8_lossy(&a.stdout), String::from_utf8_lossy(&b.stdout));
    assert_eq!(both.matches("applied 0001").count(), 1, "{both}");
    assert_eq!(both.matches("applied 0002").count(), 1, "{both}");
    assert_eq!(both.matches("applied 0003").count(), 1, "{both}");
    assert_eq!(both.matches("applied 0004").count(), 1, "{both}");
    assert_eq!(both.matches("applied 0005").count(), 1, "{both}");
    let pool = pg.pool().await;
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations").fetch_one(&pool).await.unwrap();
    assert_eq!(n, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_refuses_when_an_applied_migration_changed() {
    let pg = Postgres::start().await;
    assert!(pg.migrate().status.success());
    // What a database looks like after it applied a different version of 0001.
    let pool = pg.pool().await;
    sqlx::query("UPDATE _sqlx_migrations SET checksum = '\\x00' WHERE version = 1")
        .execute(&pool)
        .await
        .unwrap();
    let out = pg.migrate();
    assert!(!out.status.success());
    let t = text(&out);
    assert!(t.contains("migration 1 was previously applied but has been modified"), "{t}");
}
