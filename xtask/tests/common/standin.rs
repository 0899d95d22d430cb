//! The Discord stand-in's control API, as the end-to-end tests drive it.

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::TcpStream,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use serde_json::Value;

/// A JSON request to the stand-in's control API (HTTP/1.1, one connection a request).
pub fn control(addr: &str, method: &str, path: &str, body: Option<&Value>) -> Result<Value, String> {
    let mut stream = TcpStream::connect(addr).map_err(|e| format!("{addr}: {e}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
    let body = body.map(Value::to_string).unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).map_err(|e| e.to_string())?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).map_err(|e| e.to_string())?;
    let (head, body) = answer.split_once("\r\n\r\n").ok_or_else(|| format!("{method} {path}: {answer:?}"))?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!("{method} {path}: {head}"));
    }
    serde_json::from_str(body).map_err(|e| format!("{method} {path}: {e}: {body:?}"))
}

/// Messages into the stand-in every `pace`, from a thread, until stopped: message `i` is what
/// `message(i)` says (`content`, `author`, and `guild_id`/`channel_id` for other than the first).
pub struct Stream {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<(Vec<String>, Vec<String>)>>,
}

impl Stream {
    pub fn start(addr: &str, pace: Duration, message: fn(u32) -> Value) -> Stream {
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, addr) = (stop.clone(), addr.to_string());
        let thread = std::thread::spawn(move || {
            let (mut sent, mut failed) = (Vec::new(), Vec::new());
            let start = Instant::now();
            for i in 0u32.. {
                if flag.load(Ordering::SeqCst) {
                    break;
                }
                if let Some(wait) = (start + pace * i).checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                match control(&addr, "POST", "/control/messages", Some(&message(i))) {
                    Ok(answer) => sent.push(answer["id"].as_str().unwrap().to_string()),
                    Err(e) => failed.push(format!("message {i}: {e}")),
                }
            }
            (sent, failed)
        });
        Stream { stop, thread: Some(thread) }
    }

    /// The ids of the messages sent, once it has stopped.
    pub fn stop(mut self) -> Vec<String> {
        self.stop.store(true, Ordering::SeqCst);
        let (sent, failed) = self.thread.take().unwrap().join().unwrap();
        assert!(failed.is_empty(), "the stand-in refused messages of the stream: {failed:?}");
        sent
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Every reply in the main channels, by the message it answers.
fn replies(addr: &str) -> BTreeMap<String, usize> {
    let page = control(addr, "GET", "/control/posted?after=0", None).unwrap();
    let mut replies = BTreeMap::new();
    for posted in page["messages"].as_array().unwrap() {
        if let (Some(false), Some(to)) = (posted["dream"].as_bool(), posted["reply_to"].as_str()) {
            *replies.entry(to.to_string()).or_insert(0) += 1;
        }
    }
    replies
}

/// Waits (bounded) for a reply to each of `sent`; asserts each is answered exactly once.
pub fn assert_answered_once(addr: &str, sent: &[String]) {
    let start = Instant::now();
    let mut answered = replies(addr);
    while sent.iter().any(|id| !answered.contains_key(id)) && start.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(500));
        answered = replies(addr);
    }
    let lost: Vec<&String> = sent.iter().filter(|id| !answered.contains_key(*id)).collect();
    let twice: Vec<&String> = sent.iter().filter(|id| answered.get(*id).is_some_and(|n| *n > 1)).collect();
    assert!(
        lost.is_empty() && twice.is_empty(),
        "of {} messages, {} never answered ({lost:?}) and {} answered more than once ({twice:?})",
        sent.len(),
        lost.len(),
        twice.len()
    );
}
