//! testapp: the only file of the "distroless" test image. No dependencies, linked statically.
//!
//! Usage:
//!   testapp [--http PORT] [--log FILE] [--term-file FILE] [--ignore-term]
//!       Serve HTTP on 0.0.0.0:PORT (when given), logging each request line and its headers
//!       to stdout and (when given) to FILE. On SIGTERM, append the time it arrived (unix
//!       seconds with nanoseconds) to the term file and exit 0, or ignore it with
//!       --ignore-term. Without --http it only sleeps. Either way it never exits by itself.
//!       `GET /status/NNN` answers with status NNN; every other path answers 200.
//!   testapp write FILE TEXT...   append the words and a newline to FILE, then exit 0
//!                                (`{now}` in the text becomes the current unix time)
//!   testapp echo TEXT...         print the words to stdout, then exit 0
//!   testapp exit CODE            exit with CODE
//!   testapp now                  print the current unix time, then exit 0

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

const SIGTERM: i32 = 15;
const SIG_BLOCK: i32 = 0;
const MAX_HEADER_LINES: usize = 100;
const MAX_LINE: usize = 8192;

#[repr(C)]
struct SigSet {
    bits: [u64; 16],
}

extern "C" {
    fn sigemptyset(set: *mut SigSet) -> i32;
    fn sigaddset(set: *mut SigSet, sig: i32) -> i32;
    fn pthread_sigmask(how: i32, set: *const SigSet, old: *mut SigSet) -> i32;
    fn sigwait(set: *const SigSet, sig: *mut i32) -> i32;
}

static LOG: Mutex<Option<std::fs::File>> = Mutex::new(None);

fn now() -> String {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    format!("{}.{:09}", d.as_secs(), d.subsec_nanos())
}

fn log(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
    if let Ok(mut guard) = LOG.lock() {
        if let Some(f) = guard.as_mut() {
            let _ = f.write_all(text.as_bytes());
            let _ = f.flush();
        }
    }
}

fn append(path: &str, text: &str) -> std::io::Result<()> {
    let mut f = OpenOptions::new().create(true).append(true).open(path)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()
}

fn die(msg: &str) -> ! {
    eprintln!("testapp: {msg}");
    std::process::exit(2)
}

fn block_sigterm() -> SigSet {
    let mut set = SigSet { bits: [0; 16] };
    // SAFETY: `set` is a valid, writable sigset_t-sized buffer (glibc uses 128 bytes), and
    // the mask is changed before any other thread exists, so every thread inherits it.
    unsafe {
        sigemptyset(&mut set);
        sigaddset(&mut set, SIGTERM);
        if pthread_sigmask(SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            die("cannot block SIGTERM");
        }
    }
    set
}

fn wait_sigterm(set: &SigSet) {
    let mut sig = 0;
    loop {
        // SAFETY: `set` points to an initialised signal set and `sig` is a valid out pointer.
        let rc = unsafe { sigwait(set, &mut sig) };
        if rc == 0 && sig == SIGTERM {
            return;
        }
    }
}

fn handle(stream: TcpStream) {
    let peer = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let mut reader = BufReader::new(match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    });
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        if line.len() > MAX_LINE {
            break;
        }
        let line = line.trim_end_matches(['\r', '\n']).to_string();
        if line.is_empty() {
            break;
        }
        lines.push(line);
        if lines.len() > MAX_HEADER_LINES {
            break;
        }
    }
    let Some(first) = lines.first() else { return };
    let mut text = format!("request {} {} from {}\n", now(), first, peer);
    for h in &lines[1..] {
        text.push_str(&format!("header {h}\n"));
    }
    text.push_str("end\n");
    log(&text);
    let path = first.split_whitespace().nth(1).unwrap_or("/");
    let status: u16 = path
        .strip_prefix("/status/")
        .and_then(|s| s.parse().ok())
        .filter(|s| (100..600).contains(s))
        .unwrap_or(200);
    let body = format!("testapp {status}\n");
    let reply = format!(
        "HTTP/1.1 {status} X\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut stream = stream;
    let _ = stream.write_all(reply.as_bytes());
    let _ = stream.flush();
}

fn serve(port: u16) {
    let listener = match TcpListener::bind(("0.0.0.0", port)) {
        Ok(l) => l,
        Err(e) => die(&format!("cannot listen on port {port}: {e}")),
    };
    log(&format!("listening {} port {port}\n", now()));
    for conn in listener.incoming() {
        match conn {
            Ok(s) => {
                std::thread::spawn(move || handle(s));
            }
            Err(_) => continue,
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("write") => {
            let Some(path) = args.get(1) else {
                die("usage: write FILE TEXT...")
            };
            let text = format!("{}\n", args[2..].join(" ").replace("{now}", &now()));
            if let Err(e) = append(path, &text) {
                die(&format!("cannot write {path}: {e}"));
            }
            return;
        }
        Some("echo") => {
            println!("{}", args[1..].join(" "));
            return;
        }
        Some("exit") => {
            let code = args.get(1).and_then(|c| c.parse().ok()).unwrap_or(1);
            std::process::exit(code);
        }
        Some("now") => {
            println!("{}", now());
            return;
        }
        _ => {}
    }

    let mut port = None;
    let mut term_file = None;
    let mut ignore_term = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--http" => {
                port = it.next().and_then(|p| p.parse::<u16>().ok());
                if port.is_none() {
                    die("--http needs a port number");
                }
            }
            "--log" => {
                let Some(p) = it.next() else {
                    die("--log needs a file")
                };
                match OpenOptions::new().create(true).append(true).open(p) {
                    Ok(f) => {
                        if let Ok(mut g) = LOG.lock() {
                            *g = Some(f);
                        }
                    }
                    Err(e) => die(&format!("cannot open log {p}: {e}")),
                }
            }
            "--term-file" => term_file = it.next().cloned(),
            "--ignore-term" => ignore_term = true,
            other => die(&format!("unknown argument {other}")),
        }
    }

    let set = block_sigterm();
    log(&format!("started {} pid {}\n", now(), std::process::id()));
    if let Some(port) = port {
        std::thread::spawn(move || serve(port));
    }
    loop {
        wait_sigterm(&set);
        let t = now();
        log(&format!("sigterm {t}\n"));
        if let Some(p) = &term_file {
            if let Err(e) = append(p, &format!("{t}\n")) {
                eprintln!("testapp: cannot write {p}: {e}");
            }
        }
        if !ignore_term {
            std::process::exit(0);
        }
    }
}
