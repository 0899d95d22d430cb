//! Sharding: `SHARD_COUNT=2`, the real `lattice-bot run` per shard against a real Postgres and the
//! Discord stand-in, which routes each guild's events to its shard as Discord does and counts live
//! sessions per shard. Each shard has its own leader, session and handover.

mod common;

use std::{collections::HashMap, process::Command};

use common::*;

/// The world's guild is on shard 0 of 2; this one is on shard 1.
const GUILD_1: u64 = 100_000_000_000_000_001 + (1 << 22);
const CHANNEL_1: u64 = 100_000_000_000_000_004;

/// Both guilds and their main channels, `SHARD_COUNT=2`, and this shard's id given as Swarm gives it
/// (`SHARD_SLOT`, 1-based) or as `SHARD_ID`.
fn shard_env(shard: (&'static str, &'static str)) -> Vec<(&'static str, String)> {
    let w = lattice_bot::standin::World::default();
    vec![
        ("DISCORD_GUILD_ID", format!("{},{GUILD_1}", w.guild_id)),
        ("DISCORD_MAIN_CHANNEL_ID", format!("{},{CHANNEL_1}", w.main_channel_id)),
        ("SHARD_COUNT", "2".into()),
        ("USER_RATE_LIMIT", "1000".into()),
        (shard.0, shard.1.into()),
    ]
}

fn spawn(s: &Stack, env: &[(&'static str, String)]) -> Bot {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Bot::spawn(&s.pg, &s.discord, &s.llm_url, &env)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_shards_answer_their_own_guilds_once_and_each_hands_over_on_its_own() {
    let env0 = shard_env(("SHARD_ID", "0"));
    let env0: Vec<(&str, &str)> = env0.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut s = Stack::start_with(&env0).await;
    let health = s.bot.wait_healthy().await;
    let shard1 = spawn(&s, &shard_env(("SHARD_SLOT", "2")));
    let health1 = shard1.wait_healthy().await;
    assert_eq!((health["shard"].as_u64(), health1["shard"].as_u64()), (Some(0), Some(1)));
    wait_for("both shards to lead", || async {
        let h0 = s.bot.health().await?.1;
        let h1 = shard1.health().await?.1;
        (h0["role"] == "leader" && h1["role"] == "leader" && h1["gateway"] == "connected").then_some(())
    })
    .await;
    // Shard 0's next release stands by for shard 0 only.
    let next0 = spawn(&s, &shard_env(("SHARD_SLOT", "1")));
    let standby = next0.wait_healthy().await;
    assert_eq!((standby["role"].as_str(), standby["shard"].as_u64()), (Some("standby"), Some(0)));

    let (guild0, channel0) = (s.discord.world.guild_id, s.discord.world.main_channel_id);
    let mut sent: HashMap<String, u64> = HashMap::new();
    for i in 0..40 {
        if i == 20 {
            // Shard 0 hands over (as a deploy's SIGTERM does) while shard 1 keeps serving.
            let ok = Command::new("kill").args(["-TERM", &s.bot.child.id().to_string()]).status().unwrap();
            assert!(ok.success());
        }
        let (guild, channel) = if i % 2 == 0 { (guild0, channel0) } else { (GUILD_1, CHANNEL_1) };
        let id = s.discord.say_in(guild, channel, &format!("user{}", i % 5), &format!("message {i}")).await;
        sent.insert(id, channel);
        tokio::time::sleep(std::time::Duration::from_millis(40)).await;
    }

    let replies = wait_for("every message of both guilds to be answered", || async {
        let mut replies: HashMap<String, Vec<String>> = HashMap::new();
        for p in s.discord.posted().await.into_iter().filter(|p| !p.dream) {
            if let Some(to) = p.reply_to {
                replies.entry(to).or_default().push(p.channel_id);
            }
        }
        sent.keys().all(|id| replies.contains_key(id)).then_some(replies)
    })
    .await;
    for (id, channel) in &sent {
        assert_eq!(replies[id], vec![channel.to_string()], "message {id}: answered once, in its own channel");
    }
    let state = s.discord.state().await;
    let shards = &state["shards"];
    assert_eq!(shards["0"]["max_live"], 1, "never two live sessions for shard 0: {state}");
    assert_eq!(shards["1"]["max_live"], 1, "never two live sessions for shard 1: {state}");
    assert_eq!(shards["0"]["identifies"], 1, "shard 0's successor resumed its session: {state}");
    assert!(shards["0"]["resumes"].as_u64().unwrap() >= 1, "{state}");
    assert_eq!(
        (shards["1"]["identifies"].as_u64(), shards["1"]["resumes"].as_u64()),
        (Some(1), Some(0)),
        "shard 1 was not touched by shard 0's handover: {state}"
    );
    let led = next0.wait_healthy().await;
    assert_eq!((led["role"].as_str(), led["shard"].as_u64()), (Some("leader"), Some(0)));
    s.bot = next0;
    drop(shard1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_that_does_not_exist_is_refused_before_anything_connects() {
    let s = Stack::start().await;
    let mut env = shard_env(("SHARD_ID", "2"));
    env.push(("DISCORD_TOKEN_FILE", "/nonexistent/discord_token".into()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut bot = Bot::spawn(&s.pg, &s.discord, &s.llm_url, &env);
    let status = bot.child.wait().unwrap();
    assert!(!status.success());
    let out = wait_for("the error to be printed", || async {
        let out = bot.output();
        out.contains("SHARD_ID").then_some(out)
    })
    .await;
    assert!(out.contains("invalid: SHARD_ID: shard 2 does not exist: SHARD_COUNT is 2"), "{out}");
    assert!(out.contains("invalid: DISCORD_TOKEN_FILE: set together with DISCORD_TOKEN"), "{out}");
    assert_eq!(s.discord.state().await["identifies"], 1, "only the stack's own bot identified");
}
