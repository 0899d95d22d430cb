//! `lattice-bot chat`: type into the stand-in's main channel and watch the bot answer.

use std::{io::BufRead as _, time::Duration};

use anyhow::{anyhow, bail, Context as _, Result};
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::standin::Posted;

#[derive(Debug, clap::Args)]
pub struct ChatArgs {
    /// The Discord stand-in's address.
    #[arg(long, default_value = "http://127.0.0.1:8090")]
    pub url: String,
    /// After the last line, seconds to wait for the remaining replies.
    #[arg(long, default_value_t = 30)]
    pub wait: u64,
    /// Author name for the typed messages.
    #[arg(long, default_value = "you")]
    pub author: String,
}

#[derive(Deserialize)]
struct Info {
    main_channel_id: String,
}

#[derive(Deserialize)]
struct PostedPage {
    messages: Vec<Posted>,
    next: u64,
}

#[derive(Deserialize)]
struct Created {
    id: String,
}

/// A line typed by the user, waiting for its reply and its audit line.
struct Line {
    id: String,
    answered: bool,
    audited: bool,
    command: bool,
}

pub async fn run(args: ChatArgs) -> Result<()> {
    let base = args.url.trim_end_matches('/').to_owned();
    let http = reqwest::Client::builder().timeout(Duration::from_secs(15)).build()?;
    let unreachable = || {
        anyhow!("the Discord stand-in at {base} is not reachable: is the dev stack up? run `cargo xtask dev`")
    };
    let info: Info = http
        .get(format!("{base}/control/info"))
        .send()
        .await
        .map_err(|_| unreachable())?
        .error_for_status()
        .map_err(|_| unreachable())?
        .json()
        .await
        .context("the stand-in's /control/info answered something unexpected")?;
    // Start after whatever was posted before this session.
    let mut cursor = poll(&http, &base, 0, 0).await?.next;

    let (tx, mut lines) = mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });

    eprintln!("connected to {base}; type a message and press Enter (Ctrl-D to finish)");
    let mut pending: Vec<Line> = Vec::new();
    let mut eof_deadline: Option<tokio::time::Instant> = None;
    loop {
        while eof_deadline.is_none() {
            match lines.try_recv() {
                Ok(text) if text.trim().is_empty() => {}
                Ok(text) => {
                    let created: Created = http
                        .post(format!("{base}/control/messages"))
                        .json(&serde_json::json!({
                            "content": text,
                            "channel_id": info.main_channel_id,
                            "author": args.author,
                        }))
                        .send()
                        .await
                        .map_err(|_| unreachable())?
                        .error_for_status()?
                        .json()
                        .await?;
                    pending.push(Line {
                        id: created.id,
                        answered: false,
                        audited: false,
                        command: text.trim_start().starts_with('!'),
                    });
                }
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    eof_deadline = Some(tokio::time::Instant::now() + Duration::from_secs(args.wait));
                }
            }
        }
        let page = poll(&http, &base, cursor, 1).await.map_err(|_| unreachable())?;
        cursor = page.next;
        for m in page.messages {
            if m.dream {
                println!("[dream] {}", m.content);
                if let Some(line) = pending.iter_mut().find(|l| m.content.contains(&format!("msg={} ", l.id)))
                {
                    line.audited = true;
                }
            } else {
                println!("lattice: {}", m.content);
                if let Some(line) = pending.iter_mut().find(|l| m.reply_to.as_deref() == Some(l.id.as_str()))
                {
                    line.answered = true;
                }
            }
        }
        pending.retain(|l| !(l.answered && (l.audited || l.command)));
        if let Some(deadline) = eof_deadline {
            if pending.is_empty() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "{} message(s) got no complete reply within {}s: is the bot running and connected to the stand-in? \
                     (see `cargo xtask logs`)",
                    pending.len(),
                    args.wait
                );
            }
        }
    }
}

async fn poll(http: &reqwest::Client, base: &str, after: u64, wait: u64) -> Result<PostedPage> {
    Ok(http
        .get(format!("{base}/control/posted?after={after}&wait={wait}"))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?)
}
