//! Enrichment plugin benchmark (issue 7): reports, never asserts a target.
//!
//! Builds the three example plugins from source (plugins/examples, as the host's tests do),
//! loads them into one [`Host`] with [`Limits::default`], and measures on the same generated
//! contacts, in one run:
//!
//! 1. Per call: p50/p99 of [`Host::run`] (field filtering, a fresh store, instantiation, the
//!    call, the output checks) for each example, next to [`native_company`], the logic of
//!    company-from-domain compiled into this binary and called on the same contacts; the
//!    overhead is the difference of the p50s, the ratio their quotient.
//! 2. Per contact: contacts/s running the three plugins on every contact (enrichments/s = runs/s,
//!    three per contact) on 1 and 2 threads, next to company-from-domain alone, in wasm and
//!    natively.
//!
//! Before measuring, the native function is checked against the plugin on every contact (same
//! updates, same declines), so both sides compute the same thing.
//!
//! `CARNET_BENCH_ITERATIONS` (timed calls per path after a tenth as many warm-up ones, default
//! 20,000) and `CARNET_BENCH_SECONDS` (measured seconds per throughput scenario, default 3)
//! override the defaults. The process exits non-zero only when a run failed (a decline is not a
//! failure). Run: `cargo bench -p carnet-plugin-host --bench enrich`.

#[path = "../tests/support/guest.rs"]
mod guest;

use std::collections::BTreeMap;
use std::hint::black_box;
use std::str::FromStr;
use std::time::{Duration, Instant};

use carnet_plugin_host::{Host, Limits, Manifest, Plugin, RunError};

type Fields = BTreeMap<String, String>;

/// The examples, in the order they run on a contact.
const EXAMPLES: [&str; 3] = ["company-from-domain", "seen-fields", "lead-score"];
/// Distinct contacts the calls cycle through.
const CONTACTS: usize = 1024;
/// Contacts processed between two clock reads in the throughput scenarios (so the clock costs
/// the native baseline little).
const CHUNK: usize = 32;
/// The targets.
const TARGET_P50: Duration = Duration::from_micros(50);
const TARGET_RUNS_PER_SEC: f64 = 10_000.0;

// ---------------------------------------------------------------------------------------------
// The native baseline: plugins/examples/company-from-domain/src/lib.rs, with the SDK's
// `Input::require` inlined.
// ---------------------------------------------------------------------------------------------

/// Domains of personal mailboxes: no company to derive.
const WEBMAIL: [&str; 6] = ["gmail", "outlook", "hotmail", "yahoo", "icloud", "proton"];

/// `analytical-engines` → `Analytical Engines`.
fn company_of(label: &str) -> String {
    label
        .split(['-', '_'])
        .filter(|w| !w.is_empty())
        .map(|w| {
            let mut chars = w.chars();
            chars.next().map(|c| c.to_uppercase().chain(chars).collect::<String>()).unwrap_or_default()
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Returns what company-from-domain returns for `fields`: its updates, or the text of its
/// decline.
fn native_company(fields: &Fields) -> Result<Vec<(String, String)>, String> {
    let email = match fields.get("email").map(|v| v.trim()) {
        Some(v) if !v.is_empty() => v,
        _ => return Err("no `email` field".into()),
    };
    let domain = email.rsplit_once('@').map(|(_, d)| d).unwrap_or_default();
    let label = domain.split('.').next().unwrap_or_default().to_ascii_lowercase();
    if label.is_empty() || WEBMAIL.contains(&label.as_str()) {
        return Err("no company domain".into());
    }
    Ok(vec![("company".to_string(), company_of(&label))])
}

// ---------------------------------------------------------------------------------------------
// Contacts
// ---------------------------------------------------------------------------------------------

const FIRST: [&str; 8] = ["Ada", "Grace", "Alan", "Katherine", "Edsger", "Barbara", "Linus", "Margaret"];
const LAST: [&str; 8] = ["Lovelace", "Hopper", "Turing", "Johnson", "Dijkstra", "Liskov", "Torvalds", "Hamilton"];
const COMPANY_DOMAINS: [&str; 8] = [
    "analytical-engines.org",
    "acme.com",
    "initech.io",
    "globex-corp.co.uk",
    "umbrella_labs.de",
    "Stark-Industries.com",
    "wayne--enterprises.net",
    "cyberdyne.ai",
];
const WEBMAIL_DOMAINS: [&str; 6] = ["gmail.com", "outlook.fr", "hotmail.co.uk", "yahoo.com", "icloud.com", "proton.me"];
const TITLES: [&str; 10] = [
    "Chief Executive Officer",
    "VP Engineering",
    "Head of Sales",
    "Senior Software Engineer",
    "Marketing Manager",
    "Data Analyst",
    "Summer Intern",
    "Founder & CTO",
    "Vice President, Operations",
    "Accountant",
];
const COMPANIES: [&str; 4] = ["Analytical Engines", "Acme", "Initech Ltd", "Hooli"];

/// xorshift64*, fixed seed: every run measures the same contacts.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n
    }

    fn percent(&mut self, p: usize) -> bool {
        self.below(100) < p
    }
}

/// Returns `CONTACTS` contacts as the enrichment service hands them over (every field they
/// have): ~60% on a company domain, ~30% on webmail (declined by company-from-domain), ~5%
/// without an e-mail and ~5% with one that has no `@`; names always, phones, job titles,
/// companies and fields no example reads (birth date, notes) on some.
fn contacts() -> Vec<Fields> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    (0..CONTACTS)
        .map(|n| {
            let (first, last) = (FIRST[rng.below(FIRST.len())], LAST[rng.below(LAST.len())]);
            let mut c: Vec<(&str, String)> = vec![("first_name", first.into()), ("last_name", last.into())];
            let local = format!("{}.{}{}", first.to_lowercase(), last.to_lowercase(), n % 7);
            match rng.below(100) {
                0..60 => c.push(("email", format!("{local}@{}", COMPANY_DOMAINS[rng.below(COMPANY_DOMAINS.len())]))),
                60..90 => c.push(("email", format!("{local}@{}", WEBMAIL_DOMAINS[rng.below(WEBMAIL_DOMAINS.len())]))),
                90..95 => {}
                _ => c.push(("email", local)),
            }
            if rng.percent(70) {
                c.push(("phone", format!("+44 20 7946 {:04}", rng.below(10_000))));
            }
            if rng.percent(80) {
                c.push(("job_title", TITLES[rng.below(TITLES.len())].into()));
            }
            if rng.percent(40) {
                c.push(("company", COMPANIES[rng.below(COMPANIES.len())].into()));
            }
            if rng.percent(20) {
                c.push(("birth_date", format!("19{:02}-0{}-1{}", 50 + rng.below(50), 1 + rng.below(9), rng.below(10))));
            }
            if rng.percent(30) {
                c.push(("notes", "met at the trade fair; asked for a quote for the 2027 plan".into()));
            }
            c.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Measurements
// ---------------------------------------------------------------------------------------------

/// Returns the parsed value of the environment variable `name`, or `default` when it is unset.
fn env_or<T: FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(text) => text.parse().unwrap_or_else(|_| panic!("{name} must be a number, got `{text}`")),
        Err(_) => default,
    }
}

/// Whether a run's outcome is a success or a decline (anything else is a failed run).
fn ran<T>(outcome: &Result<T, RunError>) -> bool {
    matches!(outcome, Ok(_) | Err(RunError::Unsupported(_)))
}

/// The latencies of one path, sorted.
struct Latencies {
    name: String,
    sorted: Vec<Duration>,
    failed: u64,
}

impl Latencies {
    /// Nearest rank.
    fn percentile(&self, q: f64) -> Duration {
        match self.sorted.len() {
            0 => Duration::ZERO,
            len => self.sorted[((len - 1) as f64 * q).round() as usize],
        }
    }

    fn mean(&self) -> Duration {
        self.sorted.iter().sum::<Duration>() / self.sorted.len().max(1) as u32
    }
}

/// Times `iterations` calls of `call` one by one, cycling through `contacts`, after a tenth as
/// many untimed ones. `call` returns whether the run succeeded or declined.
fn time_calls(name: &str, iterations: usize, contacts: &[Fields], mut call: impl FnMut(&Fields) -> bool) -> Latencies {
    let mut failed = 0;
    for c in contacts.iter().cycle().take(iterations / 10) {
        failed += u64::from(!call(c));
    }
    let mut sorted = Vec::with_capacity(iterations);
    for c in contacts.iter().cycle().take(iterations) {
        let start = Instant::now();
        let ok = call(c);
        sorted.push(start.elapsed());
        failed += u64::from(!ok);
    }
    sorted.sort_unstable();
    Latencies { name: name.to_string(), sorted, failed }
}

/// What one throughput scenario measured.
struct Rate {
    name: &'static str,
    threads: usize,
    runs_per_contact: usize,
    contacts_per_sec: f64,
    failed: u64,
}

/// Runs `work` on contact after contact on `threads` threads (each from its own offset) for the
/// warm-up and the measured period; returns the sum of the threads' rates, each counting the
/// chunks of contacts that started and finished inside the measured period, over the time they
/// spanned. `work` returns the number of failed runs.
fn throughput(
    name: &'static str,
    threads: usize,
    runs_per_contact: usize,
    (warmup, measure): (Duration, Duration),
    contacts: &[Fields],
    work: &(dyn Fn(&Fields) -> u64 + Sync),
) -> Rate {
    let started = Instant::now();
    let (from, until) = (started + warmup, started + warmup + measure);
    let per_thread: Vec<(f64, u64)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                scope.spawn(move || {
                    let mut i = t * contacts.len() / threads;
                    let (mut done, mut failed) = (0usize, 0u64);
                    let (mut first_opt, mut last) = (None, started);
                    loop {
                        let start = Instant::now();
                        if start >= until {
                            break;
                        }
                        for _ in 0..CHUNK {
                            failed += work(&contacts[i % contacts.len()]);
                            i += 1;
                        }
                        let end = Instant::now();
                        if start >= from && end <= until {
                            first_opt.get_or_insert(start);
                            last = end;
                            done += CHUNK;
                        }
                    }
                    let span = first_opt.map_or(Duration::ZERO, |first| last - first);
                    (done as f64 / span.as_secs_f64().max(f64::MIN_POSITIVE), failed)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("bench thread")).collect()
    });
    Rate {
        name,
        threads,
        runs_per_contact,
        contacts_per_sec: per_thread.iter().map(|(rate, _)| rate).sum(),
        failed: per_thread.iter().map(|(_, failed)| failed).sum(),
    }
}

/// Returns the 1-minute load average: other processes share the cores and move the figures.
fn load_average() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace().next().unwrap_or("?").to_string()
}

/// Returns the three examples loaded into one host with the default limits, or `None` (skipped)
/// without the wasm toolchain.
fn load() -> Option<(Host, Vec<Plugin>)> {
    let host = Host::new(Limits::default()).expect("the plugin host");
    let mut plugins = Vec::new();
    for name in EXAMPLES {
        let component = guest::component(name)?;
        let manifest = Manifest::parse(&guest::manifest(name)).expect("the example's manifest");
        plugins.push(host.load(manifest, &component).unwrap_or_else(|e| panic!("failed to load {name}: {e}")));
    }
    Some((host, plugins))
}

/// Checks that `native_company` agrees with the company-from-domain plugin on every contact;
/// returns how many got a company and how many were declined.
fn check_baseline(host: &Host, plugin: &Plugin, contacts: &[Fields]) -> (usize, usize) {
    let (mut updated, mut declined) = (0, 0);
    for (i, c) in contacts.iter().enumerate() {
        match (host.run(plugin, c), native_company(c)) {
            (Ok((wasm, _)), Ok(native)) if wasm == native => updated += 1,
            (Err(RunError::Unsupported(wasm)), Err(native)) if wasm == native => declined += 1,
            (wasm, native) => {
                panic!("the native baseline disagrees with the plugin on contact {i}: {wasm:?}, {native:?}")
            }
        }
    }
    (updated, declined)
}

fn main() {
    let iterations: usize = env_or("CARNET_BENCH_ITERATIONS", 20_000);
    let window = (Duration::from_millis(500), Duration::from_secs_f64(env_or("CARNET_BENCH_SECONDS", 3.0)));
    let Some((host, plugins)) = load() else { return };
    let contacts = contacts();
    let (updated, declined) = check_baseline(&host, &plugins[0], &contacts);
    println!(
        "carnet enrichment bench: {} contacts (company-from-domain: {updated} companies, {declined} declined, native \
         baseline agrees on all), {iterations} timed calls per path, {:.1}s warm-up and {:.1}s measured per \
         throughput scenario, {} cores, load average {}",
        contacts.len(),
        window.0.as_secs_f64(),
        window.1.as_secs_f64(),
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        load_average(),
    );

    // Per call.
    let clock = time_calls("clock (empty timed call)", iterations, &contacts, |c| {
        black_box(c);
        true
    });
    let native = time_calls("native company-from-domain", iterations, &contacts, |c| {
        black_box(native_company(black_box(c))).ok();
        true
    });
    let wasm: Vec<Latencies> = EXAMPLES
        .iter()
        .zip(&plugins)
        .map(|(name, plugin)| {
            time_calls(&format!("{name} (wasm)"), iterations, &contacts, |c| ran(&host.run(plugin, c)))
        })
        .collect();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let row = |r: &Latencies, overhead: &str, ratio: &str, target: &str| {
        println!(
            "{:<30} {:>7} {:>9.2} {:>9.2} {:>9.2} {:>12} {:>9}  {target}",
            r.name,
            r.sorted.len(),
            us(r.percentile(0.5)),
            us(r.percentile(0.99)),
            us(r.mean()),
            overhead,
            ratio
        )
    };
    println!();
    println!(
        "{:<30} {:>7} {:>9} {:>9} {:>9} {:>12} {:>9}  target",
        "per call", "calls", "p50 µs", "p99 µs", "mean µs", "overhead µs", "ratio"
    );
    row(&clock, "", "", "");
    row(&native, "", "", "");
    let native_p50 = native.percentile(0.5);
    for (k, r) in wasm.iter().enumerate() {
        let p50 = r.percentile(0.5);
        // Only company-from-domain (the first) has a native twin.
        let (overhead, ratio) = match k {
            0 => (format!("{:.2}", us(p50) - us(native_p50)), format!("{:.0}x", us(p50) / us(native_p50))),
            _ => Default::default(),
        };
        let met = p50 < TARGET_P50 && r.failed == 0;
        row(r, &overhead, &ratio, &format!("p50 < 50 µs: {}", if met { "met" } else { "not met" }));
    }

    // Per contact.
    let all = |c: &Fields| plugins.iter().map(|p| u64::from(!ran(&host.run(p, c)))).sum::<u64>();
    let company_wasm = |c: &Fields| u64::from(!ran(&host.run(&plugins[0], c)));
    let company_native = |c: &Fields| {
        black_box(native_company(black_box(c))).ok();
        0
    };
    let mut rates = Vec::new();
    for threads in [1, 2] {
        rates.push(throughput("3 plugins (wasm)", threads, 3, window, &contacts, &all));
        rates.push(throughput("company-from-domain (wasm)", threads, 1, window, &contacts, &company_wasm));
        rates.push(throughput("company-from-domain (native)", threads, 1, window, &contacts, &company_native));
    }
    println!();
    println!("{:<30} {:>7} {:>12} {:>12}  target", "per contact", "threads", "contacts/s", "runs/s");
    for r in &rates {
        let runs = r.contacts_per_sec * r.runs_per_contact as f64;
        let target = if r.runs_per_contact == EXAMPLES.len() {
            let met = runs >= TARGET_RUNS_PER_SEC && r.failed == 0;
            format!("runs/s >= {TARGET_RUNS_PER_SEC:.0}: {}", if met { "met" } else { "not met" })
        } else {
            String::new()
        };
        println!("{:<30} {:>7} {:>12.0} {:>12.0}  {target}", r.name, r.threads, r.contacts_per_sec, runs);
    }
    println!("load average at the end: {}", load_average());

    let failed: u64 = wasm.iter().map(|r| r.failed).sum::<u64>() + rates.iter().map(|r| r.failed).sum::<u64>();
    if failed > 0 {
        eprintln!("{failed} runs failed (trapped, timed out or broke a limit)");
        std::process::exit(1);
    }
}
