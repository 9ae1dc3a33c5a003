//! Stand-ins for model servers' `/metrics` pages: a plain HTTP/1.0 server whose pages a test chooses by path,
//! and the fixture pages of `tests/fixtures/scrape/<server>/` (each written from that server's source at the
//! version its NOTES.md names) with their counters advancing between scrapes, as a server under load shows them.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;

/// One answer: status line (`200 OK`), content type and body.
pub type Page = (&'static str, &'static str, String);

/// Serves `page(path)` on 127.0.0.1, port 0, one thread per connection; returns `host:port`.
pub fn serve(page: impl Fn(&str) -> Page + Send + Sync + 'static) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let page = Arc::new(page);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let page = page.clone();
            std::thread::spawn(move || answer(stream, &*page));
        }
    });
    address
}

fn answer(mut stream: TcpStream, page: &dyn Fn(&str) -> Page) {
    let mut request_line = String::new();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).is_err() || header.trim().is_empty() {
            break;
        }
    }
    let path = request_line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let (status, content_type, body) = page(&path);
    let _ = write!(
        stream,
        "HTTP/1.0 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(body.as_bytes());
    let _ = stream.read(&mut [0u8; 1]);
}

/// The fixture page of `server` (`vllm`, `tgi`, `triton`, `sglang`) as it reads after `scrapes` more scrapes'
/// worth of the same traffic: every counter, bucket, count and sum multiplied by `1 + scrapes` (so buckets stay
/// cumulative and a rate is the fixture's own count per scrape), gauges and `_created` times as they are.
pub fn advanced_fixture(server: &str, scrapes: u64) -> String {
    let page = std::fs::read_to_string(format!(
        "{}/tests/fixtures/scrape/{server}/page.txt",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let factor = (1 + scrapes) as f64;
    let mut kind = "";
    let mut out = String::with_capacity(page.len());
    for line in page.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            kind = rest.split_whitespace().nth(1).unwrap_or("");
        }
        let (series, value) = match line.rsplit_once(' ') {
            Some((series, value)) if !line.starts_with('#') => (series, value),
            _ => {
                out.push_str(line);
                out.push('\n');
                continue;
            }
        };
        let name = series.split('{').next().unwrap_or(series);
        let cumulative = match kind {
            "counter" => !name.ends_with("_created"),
            "histogram" | "summary" => ["_bucket", "_count", "_sum"].iter().any(|s| name.ends_with(s)),
            _ => false,
        };
        match value.parse::<f64>() {
            Ok(v) if cumulative => out.push_str(&format!("{series} {:?}\n", v * factor)),
            _ => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}
