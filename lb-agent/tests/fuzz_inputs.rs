//! Bounded fuzzing in the test command: mutated inputs for the three parsers that read what
//! an operator or a peer hands the agent — the TOML loader with its validation and
//! resolution, the keepalived grammar and converter, the VRRP decoder — none may panic or
//! hang; every bad input is an error. Seeds are the shipped files; the mutations are
//! deterministic (xorshift), so a failure reproduces.
//!
//! `LB_FUZZ_INPUTS` sets the inputs per target (default 20,000, about 10 s in all); a long
//! run: `LB_FUZZ_INPUTS=10000000 cargo test --release -p lb-agent --test fuzz_inputs`.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    time::Instant,
};

use lb_agent::{
    config::{Config, keepalived},
    vrrp::packet::{Advert, Received, V3Ipv4Checksum},
};

fn inputs() -> u64 {
    std::env::var("LB_FUZZ_INPUTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000)
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Pieces that matter to the grammars, inserted or written over.
const TOKENS: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    "[[",
    "]]",
    "\"",
    "'",
    "=",
    "\n",
    " ",
    "#",
    "!",
    ",",
    ".",
    "0",
    "-1",
    "256",
    "99999999999999999999999",
    "1e999",
    "nan",
    "\u{0}",
    "\u{feff}",
    "é",
    "\\",
    "include *",
    "[[virtual_server]]",
    "[[vrrp_instance]]",
    "[check.x]",
    "address = ",
    "port = 70000",
    "\"10.0.0.1\"",
    "\"::1\"",
    "\"1s\"",
    "\"-5s\"",
    "true",
    "virtual_server 10.0.0.1 3306 {",
    "real_server 10.0.0.2 3306 {",
    "vrrp_instance V {",
    "MISC_CHECK {",
    "auth_pass 123456789",
];

fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut b = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(b.len() + 1);
        match rng.below(5) {
            0 if !b.is_empty() => {
                let end = (at + 1 + rng.below(64)).min(b.len());
                b.drain(at.min(end)..end);
            }
            1 => {
                let t = TOKENS[rng.below(TOKENS.len())].as_bytes();
                b.splice(at..at, t.iter().copied());
            }
            2 if at < b.len() => b[at] = rng.next() as u8,
            3 if !b.is_empty() => {
                let start = rng.below(b.len());
                let end = (start + rng.below(128)).min(b.len());
                let piece = b[start..end].to_vec();
                b.splice(at..at, piece);
            }
            _ => {
                let t = TOKENS[rng.below(TOKENS.len())].as_bytes();
                let end = (at + t.len()).min(b.len());
                b.splice(at..end, t.iter().copied());
            }
        }
    }
    b
}

fn seeds(dir: &str, ext: &str) -> Vec<Vec<u8>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut out: Vec<Vec<u8>> = std::fs::read_dir(&root)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    assert!(!out.is_empty(), "no seeds in {}", root.display());
    out.sort();
    out
}

#[test]
fn mutated_toml_configurations_are_errors_never_panics() {
    let seeds = seeds("../configs", "toml");
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let (n, t) = (inputs(), Instant::now());
    let mut accepted = 0;
    for _ in 0..n {
        let seed = &seeds[rng.below(seeds.len())];
        let text = String::from_utf8_lossy(&mutate(&mut rng, seed)).into_owned();
        if Config::parse(Path::new("fuzz.toml"), &text).is_ok() {
            accepted += 1;
        }
    }
    println!(
        "TOML: {n} inputs in {:.1} s, {accepted} still valid",
        t.elapsed().as_secs_f64()
    );
}

#[test]
fn mutated_keepalived_configurations_are_errors_never_panics() {
    let seeds = seeds("tests/data", "conf");
    let dir = std::env::temp_dir().join(format!("lbt{}-fuzzka", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("keepalived.conf");
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (n, t) = (inputs(), Instant::now());
    let mut converted = 0;
    for _ in 0..n {
        let seed = &seeds[rng.below(seeds.len())];
        std::fs::write(&path, mutate(&mut rng, seed)).unwrap();
        if let Ok(import) = keepalived::import(&path) {
            converted += 1;
            // What converts must serialize and validate (or be a clear error).
            let text = import.config.to_toml();
            let _ = Config::parse(Path::new("converted.toml"), &text);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "keepalived: {n} inputs in {:.1} s, {converted} converted",
        t.elapsed().as_secs_f64()
    );
}

#[test]
fn mutated_vrrp_adverts_are_errors_never_panics() {
    let good: Vec<u8> = [
        0x21u8, 0x33, 0x64, 0x01, 0x01, 0x01, 0x59, 0x7b, 0x0a, 0x01, 0x01, 0xb0, b'1', b'1', b'1',
        b'1', 0, 0, 0, 0,
    ]
    .to_vec();
    let rx = Received {
        src: "10.1.1.113".parse::<IpAddr>().unwrap(),
        dst: "224.0.0.18".parse().unwrap(),
        ttl: 255,
    };
    let mut rng = Rng(0xd1b5_4a32_d192_ed03);
    let (n, t) = (inputs(), Instant::now());
    for _ in 0..n {
        let b = mutate(&mut rng, &good);
        for v in [
            V3Ipv4Checksum::WithPseudoHeader,
            V3Ipv4Checksum::WithoutPseudoHeader,
        ] {
            let _ = Advert::decode(&b, rx, v);
        }
    }
    println!("VRRP: {n} inputs in {:.1} s", t.elapsed().as_secs_f64());
}
