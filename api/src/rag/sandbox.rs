//! Documents are parsed in a child process, so that a hostile one cannot take the API
//! down: a decompression bomb or a parser stuck in a loop costs one short-lived child,
//! never the server (an allocation failure aborts a Rust process, and `catch_unwind`
//! cannot catch it).
//!
//! The child is the API's own binary, run as `iafactory-api parse` (a hidden
//! subcommand) with an empty environment. Before it is sent the document, the parent
//! bounds it with `prlimit`:
//! - `RLIMIT_AS`: its address space at start plus [`ParserLimits::memory_mib`];
//! - `RLIMIT_CPU`: [`ParserLimits::cpu_seconds`] of processor time (then `SIGXCPU`,
//!   and `SIGKILL` a second later);
//! - `RLIMIT_CORE` 0: a killed parser leaves no core dump behind;
//! - `oom_score_adj` 1000: if the container runs out of memory all the same (two
//!   parsers at their limit and the API can exceed a small container's limit), the
//!   kernel kills a parser first, not the API.
//!
//! and a wall-clock timeout kills it, whatever it is doing. The document goes in on
//! stdin; the text and pages come back on stdout as JSON, after a line naming the
//! protocol ([`PROTOCOL`]). Hitting a limit fails the document with a reason that
//! says which limit.
//!
//! Plain text, Markdown and CSV are parsed in the API itself: nothing in them is
//! compressed, and their parsers' memory is linear in the upload, which
//! `max_upload_bytes` bounds. PDF, DOCX and HTML go through the child.

use std::io::{Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::parse::{self, Format, MAX_TEXT_BYTES, ParseError, ParsedDocument};
use crate::config::Config;

/// The first line the child writes on stdout, before its JSON answer.
pub const PROTOCOL: &str = "iafactory-parse/1";

/// The exit code of a child that could not read its document or write its answer.
const EXIT_IO: u8 = 3;

/// At most this much of the child's stderr is kept (for the log).
const STDERR_BYTES: u64 = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The parser ran to the end and found the document unusable.
    #[error(transparent)]
    Document(#[from] ParseError),
    #[error("the document needs more than {limit_mib} MiB to parse")]
    Memory { limit_mib: u64 },
    #[error("parsing took longer than {seconds} s")]
    Timeout { seconds: u64 },
    #[error("parsing took longer than {seconds} s of processor time")]
    CpuTime { seconds: u64 },
    #[error("the document's text is longer than {limit_mib} MiB")]
    TooMuchText { limit_mib: u64 },
    #[error("the parser crashed on the document ({status})")]
    Crashed { status: String },
    #[error("cannot start the document parser {executable}: {reason}")]
    Start { executable: String, reason: String },
    #[error("the document parser {executable} failed: {reason}")]
    Child { executable: String, reason: String },
}

impl SandboxError {
    /// Whether the failure is the parser's setting-up rather than the document's
    /// doing: those are retried, the others fail the document at once.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            SandboxError::Start { .. } | SandboxError::Child { .. }
        )
    }
}

/// What bounds one parse.
#[derive(Debug, Clone)]
pub struct ParserLimits {
    /// The API binary (or any program speaking [`PROTOCOL`]).
    pub executable: PathBuf,
    /// Memory the child may map beyond what it has at start.
    pub memory_mib: u64,
    pub cpu_seconds: u64,
    pub timeout: Duration,
}

impl ParserLimits {
    /// From the configuration; the executable defaults to the running binary.
    pub fn from_config(config: &Config) -> Result<Self, SandboxError> {
        let executable = match &config.parser_executable {
            Some(path) => PathBuf::from(path),
            None => std::env::current_exe().map_err(|e| SandboxError::Start {
                executable: "(the running binary)".into(),
                reason: format!("cannot locate it: {e}"),
            })?,
        };
        Ok(Self {
            executable,
            memory_mib: config.parser_memory_mib,
            cpu_seconds: config.parser_cpu_seconds,
            timeout: Duration::from_secs(config.parser_timeout_seconds),
        })
    }
}

/// Whether a format is parsed in a child process (see the module's documentation).
pub fn isolates(format: Format) -> bool {
    match format {
        Format::Pdf | Format::Docx | Format::Html => true,
        Format::Text | Format::Markdown | Format::Csv => false,
    }
}

/// Parses a document: in a bounded child process for the formats that need one, in
/// this process (on a blocking thread) for the others.
pub async fn extract(
    limits: &ParserLimits,
    format: Format,
    bytes: Vec<u8>,
) -> Result<ParsedDocument, SandboxError> {
    if !isolates(format) {
        return tokio::task::spawn_blocking(move || parse::extract(format, &bytes))
            .await
            .map_err(|_| SandboxError::Crashed {
                status: "a panic".into(),
            })?
            .map_err(SandboxError::Document);
    }
    extract_in_child(limits, format, &bytes).await
}

/// Runs the parser in a child process bounded by `limits`.
pub async fn extract_in_child(
    limits: &ParserLimits,
    format: Format,
    bytes: &[u8],
) -> Result<ParsedDocument, SandboxError> {
    let executable = limits.executable.display().to_string();
    let child_error = |reason: String| SandboxError::Child {
        executable: executable.clone(),
        reason,
    };
    let started = std::time::Instant::now();
    let mut child = tokio::process::Command::new(&limits.executable)
        .arg("parse")
        .arg("--content-type")
        .arg(format.content_type())
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| SandboxError::Start {
            executable: executable.clone(),
            reason: e.to_string(),
        })?;
    // The child is blocked reading stdin until it gets the document: bound it first.
    if let Err(reason) = bound(&child, limits) {
        let _ = child.start_kill();
        let _ = child.wait().await;
        return Err(child_error(format!("cannot bound it: {reason}")));
    }
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let mut stderr = child.stderr.take().expect("stderr is piped");
    // The answer: the protocol line, then the text as JSON (escapes and structure
    // make it longer than the text; past this bound the text is too long anyway).
    let answer_cap = PROTOCOL.len() + 1 + 2 * MAX_TEXT_BYTES + 1024 * 1024;
    let exchange = async {
        let write = async {
            // A child that dies early closes its stdin: what it answers says why.
            let _ = stdin.write_all(bytes).await;
            drop(stdin);
        };
        let read = async {
            // Read to the end, keeping at most the cap: a child blocked on a full
            // pipe would never exit.
            let mut kept = Vec::new();
            let mut total = 0usize;
            let mut buffer = vec![0u8; 64 * 1024];
            loop {
                match stdout.read(&mut buffer).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        total += n;
                        if kept.len() < answer_cap {
                            let room = (answer_cap - kept.len()).min(n);
                            kept.extend_from_slice(&buffer[..room]);
                        }
                    }
                }
            }
            (kept, total)
        };
        let errors = async {
            let mut kept = Vec::new();
            let _ = (&mut stderr)
                .take(STDERR_BYTES)
                .read_to_end(&mut kept)
                .await;
            // Drain the rest, unkept.
            let _ = tokio::io::copy(&mut stderr, &mut tokio::io::sink()).await;
            kept
        };
        let ((), (answer, total), errors) = tokio::join!(write, read, errors);
        let status = child.wait().await;
        (answer, total, errors, status)
    };
    let (answer, total, errors, status) = match tokio::time::timeout(limits.timeout, exchange).await
    {
        Ok(done) => done,
        Err(_) => {
            let _ = child.start_kill();
            let _ = child.wait().await;
            return Err(SandboxError::Timeout {
                seconds: limits.timeout.as_secs(),
            });
        }
    };
    let status = status.map_err(|e| child_error(format!("cannot wait for it: {e}")))?;
    let errors = String::from_utf8_lossy(&errors);
    if !status.success() {
        tracing::warn!(%status, stderr = %errors.trim(), "the document parser stopped");
    }
    match (status.code(), status.signal()) {
        (Some(0), _) => {}
        (_, Some(signal)) if signal == libc_signal::SIGXCPU => {
            return Err(SandboxError::CpuTime {
                seconds: limits.cpu_seconds,
            });
        }
        // The CPU limit's hard stop, a second after SIGXCPU was ignored (a child
        // cannot spend its processor time faster than the wall clock).
        (_, Some(signal))
            if signal == libc_signal::SIGKILL
                && started.elapsed().as_secs() >= limits.cpu_seconds =>
        {
            return Err(SandboxError::CpuTime {
                seconds: limits.cpu_seconds,
            });
        }
        // Rust aborts when an allocation fails, after saying so on stderr.
        (_, Some(_)) | (Some(_), _) if errors.contains("memory allocation of") => {
            return Err(SandboxError::Memory {
                limit_mib: limits.memory_mib,
            });
        }
        (Some(code), _) if code == i32::from(EXIT_IO) => {
            return Err(child_error(format!(
                "it could not read the document or write its answer: {}",
                errors.trim()
            )));
        }
        _ => {
            return Err(SandboxError::Crashed {
                status: status.to_string(),
            });
        }
    }
    if total > answer_cap {
        return Err(SandboxError::TooMuchText {
            limit_mib: MAX_TEXT_BYTES as u64 / (1024 * 1024),
        });
    }
    let body = answer
        .strip_prefix(PROTOCOL.as_bytes())
        .and_then(|rest| rest.strip_prefix(b"\n"))
        .ok_or_else(|| {
            child_error(format!(
                "it does not answer as a document parser ({PROTOCOL}): is it the iafactory-api binary? Set parser_executable (IAF_PARSER_EXECUTABLE)"
            ))
        })?;
    let outcome: Result<ParsedDocument, ParseError> = serde_json::from_slice(body)
        .map_err(|e| child_error(format!("its answer is not readable: {e}")))?;
    Ok(outcome?)
}

/// Signal numbers (Linux), without a libc dependency for three constants.
mod libc_signal {
    pub const SIGKILL: i32 = 9;
    pub const SIGXCPU: i32 = 24;
}

/// Applies the limits to a freshly started child.
fn bound(child: &tokio::process::Child, limits: &ParserLimits) -> Result<(), String> {
    use rustix::process::{Pid, Resource, Rlimit, prlimit};
    let raw = child.id().ok_or("it has already exited")? as i32;
    let pid = Pid::from_raw(raw).ok_or("it has no process id")?;
    let baseline = address_space(raw)?;
    let memory = baseline + limits.memory_mib * 1024 * 1024;
    let set = |resource, current: u64, maximum: u64| {
        prlimit(
            Some(pid),
            resource,
            Rlimit {
                current: Some(current),
                maximum: Some(maximum),
            },
        )
        .map(|_| ())
        .map_err(|e| format!("prlimit {resource:?}: {e}"))
    };
    set(Resource::Core, 0, 0)?;
    // Raising one's own child's score needs no privilege; where /proc is read-only,
    // the limits below still hold.
    if let Err(error) = std::fs::write(format!("/proc/{raw}/oom_score_adj"), "1000") {
        tracing::warn!(%error, "cannot make the document parser the first to go when memory runs out");
    }
    set(Resource::As, memory, memory)?;
    set(
        Resource::Cpu,
        limits.cpu_seconds,
        limits.cpu_seconds.saturating_add(1),
    )
}

/// A process's mapped address space (`VmSize`), in bytes.
fn address_space(pid: i32) -> Result<u64, String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("cannot read /proc/{pid}/status: {e}"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmSize:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .ok_or_else(|| format!("no VmSize in /proc/{pid}/status"))
}

/// The child's side: `iafactory-api parse --content-type TYPE`. Reads the document on
/// stdin, writes [`PROTOCOL`] and the outcome as JSON on stdout. The parent has
/// bounded this process before sending the document.
pub fn child_main(content_type: &str) -> ExitCode {
    let Some(format) = Format::from_content_type(content_type) else {
        eprintln!("unknown content type {content_type:?}");
        return ExitCode::from(2);
    };
    let mut document = Vec::new();
    if let Err(e) = std::io::stdin().lock().read_to_end(&mut document) {
        eprintln!("cannot read the document: {e}");
        return ExitCode::from(EXIT_IO);
    }
    let outcome = parse::extract(format, &document);
    drop(document);
    let mut stdout = std::io::stdout().lock();
    let written = writeln!(stdout, "{PROTOCOL}")
        .and_then(|()| serde_json::to_writer(&mut stdout, &outcome).map_err(std::io::Error::from))
        .and_then(|()| stdout.flush());
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cannot write the answer: {e}");
            ExitCode::from(EXIT_IO)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn script(body: &str) -> (tempfile::TempDir, PathBuf) {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("parser.sh");
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        (dir, path)
    }

    fn limits(executable: PathBuf) -> ParserLimits {
        ParserLimits {
            executable,
            memory_mib: 256,
            cpu_seconds: 1,
            timeout: Duration::from_secs(2),
        }
    }

    #[tokio::test]
    async fn a_child_past_the_wall_clock_is_killed() {
        let (_dir, path) = script("echo $$ > \"$(dirname \"$0\")/pid\"; exec sleep 60");
        let started = std::time::Instant::now();
        let error = extract_in_child(&limits(path.clone()), Format::Pdf, b"%PDF")
            .await
            .unwrap_err();
        assert!(
            matches!(error, SandboxError::Timeout { seconds: 2 }),
            "{error:?}"
        );
        assert_eq!(error.to_string(), "parsing took longer than 2 s");
        assert!(started.elapsed() < Duration::from_secs(10));
        let pid = std::fs::read_to_string(path.with_file_name("pid")).unwrap();
        assert!(
            !std::path::Path::new(&format!("/proc/{}", pid.trim())).exists(),
            "the child is gone"
        );
    }

    #[tokio::test]
    async fn a_child_past_its_processor_time_is_stopped() {
        let (_dir, path) = script("while :; do :; done");
        let mut limits = limits(path);
        limits.timeout = Duration::from_secs(30);
        let error = extract_in_child(&limits, Format::Pdf, b"%PDF")
            .await
            .unwrap_err();
        assert!(
            matches!(error, SandboxError::CpuTime { seconds: 1 }),
            "{error:?}"
        );
    }

    #[tokio::test]
    async fn the_child_is_bounded_before_it_reads_the_document() {
        // The child records its own limits once it has read the document.
        let (dir, path) = script(
            "cat >/dev/null; cat /proc/self/limits /proc/self/oom_score_adj > \"$(dirname \"$0\")/seen\"",
        );
        let _ = extract_in_child(&limits(path), Format::Pdf, b"%PDF").await;
        let seen = std::fs::read_to_string(dir.path().join("seen")).unwrap();
        let limit = |name: &str| -> Vec<String> {
            let line = seen.lines().find(|l| l.starts_with(name)).unwrap();
            line[name.len()..]
                .split_whitespace()
                .map(str::to_owned)
                .collect()
        };
        assert_eq!(limit("Max cpu time")[..2], ["1", "2"], "{seen}");
        assert_eq!(limit("Max core file size")[..2], ["0", "0"], "{seen}");
        let address_space: u64 = limit("Max address space")[0].parse().unwrap();
        // The shell's own few MiB, plus the 256 MiB allowed.
        assert!(
            (256 * 1024 * 1024..300 * 1024 * 1024).contains(&address_space),
            "{seen}"
        );
        assert_eq!(seen.lines().last(), Some("1000"), "{seen}");
    }

    #[tokio::test]
    async fn a_program_that_is_not_the_parser_is_said_so() {
        let (_dir, path) = script("cat >/dev/null; echo hello");
        let error = extract_in_child(&limits(path), Format::Pdf, b"%PDF")
            .await
            .unwrap_err();
        assert!(error.is_transient(), "{error:?}");
        assert!(error.to_string().contains("parser_executable"), "{error}");
    }
}
