//! Scenario (g): a crowd signing in while the chat is busy. Members are made first (a guest joins over
//! the socket, then keeps the name over HTTP, as a browser does); then the (a) load runs twice on the
//! same server, without and with 100 concurrent sign-ins fired into its measured window, and the two
//! chat p99s are reported side by side. Password hashing runs off the async runtime, so the second
//! should stay close to the first.

use futures_util::{SinkExt, StreamExt};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

const COOKIE: &str = "confab_session";

/// One HTTP/1.1 request; the response's status and head.
async fn http(
    port: u16,
    method: &str,
    path: &str,
    cookie: Option<&str>,
    body: &str,
) -> Result<(u16, String), String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let cookie = cookie
        .map(|token| format!("Cookie: {COOKIE}={token}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{cookie}\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .await
        .map_err(|e| format!("read: {e}"))?;
    let response = String::from_utf8_lossy(&response).into_owned();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| "no status line".to_owned())?;
    let head = response
        .split("\r\n\r\n")
        .next()
        .unwrap_or_default()
        .to_owned();
    Ok((status, head))
}

/// The session token a response sets.
fn session_token(head: &str) -> Option<String> {
    head.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        if !key.eq_ignore_ascii_case("set-cookie") {
            return None;
        }
        let token = value
            .trim()
            .strip_prefix(&format!("{COOKIE}="))?
            .split(';')
            .next()?;
        (!token.is_empty()).then(|| token.to_owned())
    })
}

/// The password of bench member `i`.
fn password(i: usize) -> String {
    format!("bench password {i:04}")
}

/// Makes `count` members named `Signer0000`…: a browser session, a guest joined over the socket, then
/// "Keep this name".
pub async fn make_members(port: u16, count: usize) -> Result<(), String> {
    for i in 0..count {
        let (_, head) = http(port, "GET", "/", None, "").await?;
        let token = session_token(&head).ok_or("the page issued no session")?;
        let mut request = format!("ws://127.0.0.1:{port}/ws")
            .into_client_request()
            .map_err(|e| e.to_string())?;
        request.headers_mut().insert(
            "cookie",
            format!("{COOKIE}={token}")
                .parse()
                .map_err(|_| "cookie header")?,
        );
        let (mut socket, _) = tokio_tungstenite::connect_async(request)
            .await
            .map_err(|e| format!("websocket: {e}"))?;
        let join = format!(r#"{{"type":"join","name":"Signer{i:04}"}}"#);
        socket
            .send(Message::text(join))
            .await
            .map_err(|e| e.to_string())?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let frame = tokio::time::timeout_at(deadline.into(), socket.next())
                .await
                .map_err(|_| "no joined frame in time")?;
            match frame {
                Some(Ok(Message::Text(text))) if text.contains(r#""type":"joined""#) => break,
                Some(Ok(_)) => continue,
                other => return Err(format!("the socket ended before joining: {other:?}")),
            }
        }
        let body = format!("password={}", password(i).replace(' ', "+"));
        let (status, _) = http(port, "POST", "/account/claim", Some(&token), &body).await?;
        if status != 303 {
            return Err(format!("keeping a name answered {status}"));
        }
        let _ = socket.close(None).await;
    }
    Ok(())
}

/// Signs all `count` members in at once; each sign-in's latency, in milliseconds, sorted.
pub async fn sign_in_all(port: u16, count: usize) -> Result<Vec<f64>, String> {
    let attempts = (0..count).map(|i| {
        tokio::spawn(async move {
            let started = Instant::now();
            let body = format!(
                "name=Signer{i:04}&password={}",
                password(i).replace(' ', "+")
            );
            let (status, _) = http(port, "POST", "/login", None, &body).await?;
            if status != 303 {
                return Err(format!("sign-in {i} answered {status}"));
            }
            Ok::<f64, String>(started.elapsed().as_secs_f64() * 1000.0)
        })
    });
    let mut times = Vec::with_capacity(count);
    for attempt in attempts.collect::<Vec<_>>() {
        times.push(attempt.await.map_err(|e| e.to_string())??);
    }
    times.sort_by(f64::total_cmp);
    Ok(times)
}

/// The value at quantile `q` of sorted `values`.
pub fn quantile(values: &[f64], q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let index = ((values.len() as f64 * q).ceil() as usize).clamp(1, values.len()) - 1;
    values[index]
}
