//! End-to-end tests of the `flotilla` binary: each test starts a real
//! controller in-process on loopback (SQLite in a temporary directory) and
//! runs the real binary against it as a child process, the way an operator
//! or a script would. No mocks: what passes here works against a controller.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use flotilla_controller::testing::{TestController, TestStore, enroll_request};
use flotilla_gguf::{GgmlType, GgufBuilder};
use serde_json::Value;
use tempfile::TempDir;

type TestResult<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// No single CLI run in these tests should come anywhere near this.
const RUN_DEADLINE: Duration = Duration::from_secs(180);

/// A controller serving on loopback (the controller's test harness, on
/// SQLite), and a home directory for the CLI.
struct CliHarness {
    controller: TestController,
    home: TempDir,
}

impl CliHarness {
    async fn start() -> TestResult<Self> {
        Ok(Self {
            controller: TestController::start(TestStore::Sqlite).await?,
            home: tempfile::tempdir()?,
        })
    }

    fn url(&self) -> &str {
        &self.controller.url
    }

    fn admin_token(&self) -> &str {
        &self.controller.admin_token
    }

    /// `flotilla` with this controller's URL and the admin token in the environment.
    fn cli(&self) -> Cli {
        Cli::new(self.home.path())
            .env("FLOTILLA_URL", self.url())
            .env("FLOTILLA_TOKEN", self.admin_token())
    }

    /// `flotilla` with nothing configured but an empty home directory.
    fn bare_cli(&self) -> Cli {
        Cli::new(self.home.path())
    }

    fn scratch(&self, name: &str) -> PathBuf {
        self.home.path().join(name)
    }
}

/// One run of the binary being built.
struct Cli {
    command: tokio::process::Command,
}

impl Cli {
    fn new(home: &Path) -> Self {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_flotilla"));
        // Whatever the developer's shell has configured must not leak in.
        command
            .env_remove("FLOTILLA_URL")
            .env_remove("FLOTILLA_TOKEN")
            .env("HOME", home)
            .env("XDG_CONFIG_HOME", home.join("xdg"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        Self { command }
    }

    fn env(mut self, key: &str, value: impl AsRef<std::ffi::OsStr>) -> Self {
        self.command.env(key, value);
        self
    }

    fn arg(mut self, arg: &str) -> Self {
        self.command.arg(arg);
        self
    }

    fn arg_path(mut self, path: &Path) -> Self {
        self.command.arg(path);
        self
    }

    fn env_remove(mut self, key: &str) -> Self {
        self.command.env_remove(key);
        self
    }

    fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        self.command.args(args);
        self
    }

    async fn run(mut self) -> TestResult<Outcome> {
        // The arguments only: the environment holds tokens, which must not
        // end up in a test log.
        let description = std::iter::once(self.command.as_std().get_program())
            .chain(self.command.as_std().get_args())
            .map(|part| part.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ");
        let child = self.command.spawn()?;
        let output = tokio::time::timeout(RUN_DEADLINE, child.wait_with_output())
            .await
            .map_err(|_| format!("{description} did not finish within {RUN_DEADLINE:?}"))??;
        Ok(Outcome {
            description,
            code: output.status.code(),
            stdout: String::from_utf8(output.stdout)?,
            stderr: String::from_utf8(output.stderr)?,
        })
    }
}

#[derive(Debug)]
struct Outcome {
    description: String,
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Outcome {
    fn success(self) -> TestResult<Self> {
        if self.code != Some(0) {
            return Err(format!("{self:#?} failed").into());
        }
        self.no_panic()
    }

    /// Asserts the exit code and that the error was reported the CLI's way.
    fn failure(self, code: i32) -> TestResult<Self> {
        // Code 1 in these tests means "a failure that is not a usage error":
        // the CLI now tells failures apart (3 auth, 4 not found, 5 conflict,
        // 6 unavailable; see cli/src/main.rs), and any of those counts.
        let matches = match code {
            1 => self
                .code
                .is_some_and(|actual| actual == 1 || (3..=6).contains(&actual)),
            _ => self.code == Some(code),
        };
        if !matches {
            return Err(format!("expected exit code {code}: {self:#?}").into());
        }
        // Progress notes may come first; the error is the last line.
        if code == 1
            && !self
                .stderr
                .lines()
                .last()
                .is_some_and(|line| line.starts_with("error: "))
        {
            return Err(format!("expected a final `error: ` line: {self:#?}").into());
        }
        self.no_panic()
    }

    fn no_panic(self) -> TestResult<Self> {
        if self.stderr.contains("panicked") {
            return Err(format!("the CLI panicked: {self:#?}").into());
        }
        Ok(self)
    }

    fn json(&self) -> TestResult<Value> {
        serde_json::from_str(&self.stdout).map_err(|e| {
            format!(
                "{}: stdout is not JSON ({e}): {:?}",
                self.description, self.stdout
            )
            .into()
        })
    }

    fn stderr_has(&self, needle: &str) -> TestResult<&Self> {
        if !self.stderr.contains(needle) {
            return Err(format!("stderr lacks {needle:?}: {self:#?}").into());
        }
        Ok(self)
    }

    fn stdout_has(&self, needle: &str) -> TestResult<&Self> {
        if !self.stdout.contains(needle) {
            return Err(format!("stdout lacks {needle:?}: {self:#?}").into());
        }
        Ok(self)
    }
}

/// A tiny servable Q4_1 llama GGUF file ([`GgufBuilder::tiny_llama`]).
/// `seed` varies the bytes so different seeds give different digests.
fn tiny_gguf(seed: u8) -> Vec<u8> {
    GgufBuilder::tiny_llama(3, seed)
}

fn field<'a>(value: &'a Value, pointer: &str) -> TestResult<&'a Value> {
    value
        .pointer(pointer)
        .ok_or_else(|| format!("no {pointer} in {value:#}").into())
}

fn text_field<'a>(value: &'a Value, pointer: &str) -> TestResult<&'a str> {
    field(value, pointer)?
        .as_str()
        .ok_or_else(|| format!("{pointer} is not a string in {value:#}").into())
}

fn number_field(value: &Value, pointer: &str) -> TestResult<u64> {
    field(value, pointer)?
        .as_u64()
        .ok_or_else(|| format!("{pointer} is not a number in {value:#}").into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_then_list_show_resolve_and_retire() -> TestResult {
    let controller = CliHarness::start().await?;
    let bytes = tiny_gguf(1);
    let file = controller.scratch("tiny.gguf");
    std::fs::write(&file, &bytes)?;
    let expected_digest = blake3::hash(&bytes).to_hex().to_string();

    let pushed = controller
        .cli()
        .args(["model", "push"])
        .arg_path(&file)
        .args([
            "--name",
            "tiny",
            "--version",
            "1.0.0",
            "--description",
            "a test model",
            "-o",
            "json",
        ])
        .run()
        .await?
        .success()?;
    pushed.stderr_has("published tiny 1.0.0")?;
    let artifact = pushed.json()?;
    assert_eq!(text_field(&artifact, "/digest")?, expected_digest);
    assert_eq!(text_field(&artifact, "/quantization")?, "Q4_1");
    assert_eq!(text_field(&artifact, "/architecture")?, "llama");
    let parameters = flotilla_gguf::read_header(&bytes[..])?.parameter_count();
    assert_eq!(number_field(&artifact, "/parameter_count")?, parameters);
    assert_eq!(artifact.pointer("/servable"), Some(&Value::Bool(true)));
    assert_eq!(number_field(&artifact, "/size_bytes")?, bytes.len() as u64);
    assert_eq!(number_field(&artifact, "/context_length")?, 2048);

    let listed = controller
        .cli()
        .args(["model", "ls", "-o", "json"])
        .run()
        .await?
        .success()?;
    let listed = listed.json()?;
    assert_eq!(text_field(&listed, "/items/0/name")?, "tiny");
    assert_eq!(text_field(&listed, "/items/0/description")?, "a test model");
    let table = controller
        .cli()
        .args(["model", "ls"])
        .run()
        .await?
        .success()?;
    table
        .stdout_has("NAME")?
        .stdout_has("tiny")?
        .stdout_has("a test model")?;

    let shown = controller
        .cli()
        .args(["--output", "json", "model", "show", "tiny"])
        .run()
        .await?
        .success()?;
    let shown = shown.json()?;
    assert_eq!(text_field(&shown, "/name")?, "tiny");
    assert_eq!(text_field(&shown, "/versions/0/version")?, "1.0.0");
    assert_eq!(text_field(&shown, "/versions/0/state")?, "published");
    assert_eq!(
        text_field(&shown, "/versions/0/artifacts/0/digest")?,
        expected_digest
    );
    let table = controller
        .cli()
        .args(["model", "show", "tiny"])
        .run()
        .await?
        .success()?;
    table
        .stdout_has("published")?
        .stdout_has("Q4_1")?
        .stdout_has("llama")?
        .stdout_has(&expected_digest[..12])?;

    let resolved = controller
        .cli()
        .args([
            "model",
            "resolve",
            "tiny",
            "--version",
            "^1",
            "--quant",
            "auto",
            "--memory-budget",
            "1GiB",
            "-o",
            "json",
        ])
        .run()
        .await?
        .success()?;
    let resolved = resolved.json()?;
    assert_eq!(text_field(&resolved, "/version")?, "1.0.0");
    assert_eq!(text_field(&resolved, "/artifact/digest")?, expected_digest);
    let table = controller
        .cli()
        .args(["model", "resolve", "tiny"])
        .run()
        .await?
        .success()?;
    table
        .stdout_has("1.0.0 (published)")?
        .stdout_has("blake3:")?;

    // Pushing the same file again changes nothing and succeeds.
    let again = controller
        .cli()
        .args(["model", "push"])
        .arg_path(&file)
        .args(["--name", "tiny", "--version", "1.0.0", "-o", "json"])
        .run()
        .await?
        .success()?;
    again.stderr_has("already has this file")?;
    assert_eq!(text_field(&again.json()?, "/digest")?, expected_digest);

    // A different file cannot be added to a published version.
    let other = controller.scratch("other.gguf");
    std::fs::write(&other, tiny_gguf(2))?;
    let refused = controller
        .cli()
        .args(["model", "push"])
        .arg_path(&other)
        .args(["--name", "tiny", "--version", "1.0.0"])
        .run()
        .await?
        .failure(1)?;
    refused.stderr_has("is published; artifacts can be added only to drafts")?;

    // The lifecycle: deprecated still resolves, yanked never does.
    let deprecated = controller
        .cli()
        .args(["model", "deprecate", "tiny", "1.0.0"])
        .run()
        .await?
        .success()?;
    deprecated.stdout_has("tiny 1.0.0 is now deprecated")?;
    controller
        .cli()
        .args(["model", "resolve", "tiny"])
        .run()
        .await?
        .success()?;
    let yanked = controller
        .cli()
        .args(["model", "yank", "tiny", "1.0.0", "-o", "json"])
        .run()
        .await?
        .success()?;
    assert_eq!(text_field(&yanked.json()?, "/state")?, "yanked");
    controller
        .cli()
        .args(["model", "resolve", "tiny"])
        .run()
        .await?
        .failure(1)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drafts_take_several_quantizations_until_published() -> TestResult {
    let controller = CliHarness::start().await?;
    let file = controller.scratch("tiny.gguf");
    std::fs::write(&file, tiny_gguf(3))?;
    let drafted = controller
        .cli()
        .args(["model", "push"])
        .arg_path(&file)
        .args([
            "--name",
            "drafty",
            "--version",
            "0.1.0",
            "--quant",
            "Q4_1",
            "--draft",
            "--notes",
            "first cut",
        ])
        .run()
        .await?
        .success()?;
    drafted.stdout_has("0.1.0 (draft)")?;
    // A draft does not resolve; publishing makes it.
    controller
        .cli()
        .args(["model", "resolve", "drafty"])
        .run()
        .await?
        .failure(1)?;
    controller
        .cli()
        .args(["model", "publish", "drafty", "0.1.0"])
        .run()
        .await?
        .success()?;
    let resolved = controller
        .cli()
        .args(["model", "resolve", "drafty", "-o", "json"])
        .run()
        .await?
        .success()?;
    assert_eq!(text_field(&resolved.json()?, "/version")?, "0.1.0");
    Ok(())
}

/// Issue 14: a file this release's engine cannot load is stored (another
/// release may serve it) but recorded as unservable, shown with the engine's
/// reason, and never resolved: resolve, assign and rollout create refuse it
/// before any node is touched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unservable_artifact_is_shown_and_never_rolled_out() -> TestResult {
    let controller = CliHarness::start().await?;
    // A valid GGUF header whose one matrix is a type the engine has no kernel for.
    let unservable = GgufBuilder::tiny_llama(3, 1);
    let mut header = flotilla_gguf::read_header(&unservable[..])?;
    let retyped = header
        .tensors
        .iter_mut()
        .find(|tensor| tensor.name == "blk.1.ffn_down.weight")
        .ok_or("the fixture has blk.1.ffn_down.weight")?;
    retyped.ggml_type = GgmlType::IQ4_NL;
    let file = controller.scratch("iq4.gguf");
    std::fs::write(&file, rebuild_with(&header, &unservable))?;
    let pushed = controller
        .cli()
        .args(["model", "push"])
        .arg_path(&file)
        .args(["--name", "exotic", "--version", "1.0.0", "-o", "json"])
        .run()
        .await?
        .success()?
        .json()?;
    assert_eq!(field(&pushed, "/servable")?, &Value::Bool(false));
    let reason = text_field(&pushed, "/unservable_reason")?.to_owned();
    assert!(reason.contains("IQ4_NL"), "{reason}");
    controller
        .cli()
        .args(["model", "show", "exotic"])
        .run()
        .await?
        .success()?
        .stdout_has("NO")?
        .stdout_has(&format!("1.0.0 Q4_1: cannot be served: {reason}"))?;

    let refusal = "cannot be served by this release's engine";
    controller
        .cli()
        .args(["model", "resolve", "exotic"])
        .run()
        .await?
        .failure(1)?
        .stderr_has(refusal)?;
    controller
        .cli()
        .args([
            "assign",
            "--selector",
            "site=lab",
            "--model",
            "exotic",
            "--version",
            "1.0.0",
        ])
        .run()
        .await?
        .failure(1)?
        .stderr_has(refusal)?;
    let rollout = controller
        .cli()
        .args([
            "rollout",
            "create",
            "r1",
            "--model",
            "exotic",
            "--version",
            "^1",
            "--selector",
            "site=lab",
        ])
        .run()
        .await?
        .failure(1)?;
    rollout.stderr_has(refusal)?.stderr_has("IQ4_NL")?;
    Ok(())
}

/// `original` with its header replaced by `header`'s (tensor data laid out
/// again for the new types: zeros, as the fixture's matrices are).
fn rebuild_with(header: &flotilla_gguf::GgufHeader, original: &[u8]) -> Vec<u8> {
    let source = flotilla_gguf::read_header(original).expect("the fixture parses");
    let mut builder = GgufBuilder::new();
    for (key, value) in source.metadata.iter() {
        builder = builder.metadata(key, value.clone());
    }
    for tensor in &header.tensors {
        let bytes = tensor.byte_size() as usize;
        let data = if tensor.ggml_type == GgmlType::F32 {
            (0..bytes / 4).flat_map(|_| 1.0f32.to_le_bytes()).collect()
        } else {
            vec![0; bytes]
        };
        builder = builder.tensor(&tensor.name, &tensor.dims, tensor.ggml_type, &data);
    }
    builder.build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_pushes_fail_with_clear_messages() -> TestResult {
    let controller = CliHarness::start().await?;
    let not_gguf = controller.scratch("notes.txt");
    std::fs::write(&not_gguf, "hello, this is not a model\n")?;
    let refused = controller
        .cli()
        .args(["model", "push"])
        .arg_path(&not_gguf)
        .args(["--name", "broken", "--version", "1.0.0"])
        .run()
        .await?
        .failure(1)?;
    refused.stderr_has("not a valid GGUF file")?;

    let missing = controller
        .cli()
        .args([
            "model",
            "push",
            "/nonexistent/model.gguf",
            "--name",
            "broken",
            "--version",
            "1.0.0",
        ])
        .run()
        .await?
        .failure(1)?;
    missing.stderr_has("cannot read /nonexistent/model.gguf")?;

    let file = controller.scratch("tiny.gguf");
    std::fs::write(&file, tiny_gguf(4))?;
    let wrong_quant = controller
        .cli()
        .args(["model", "push"])
        .arg_path(&file)
        .args(["--name", "broken", "--version", "1.0.1", "--quant", "Q8_0"])
        .run()
        .await?
        .failure(1)?;
    wrong_quant.stderr_has("quantization is Q4_1, but Q8_0 was requested")?;

    // Usage errors are clap's, with exit code 2.
    controller
        .cli()
        .args(["model", "push"])
        .arg_path(&file)
        .args(["--name", "broken", "--version", "one"])
        .run()
        .await?
        .failure(2)?;
    controller
        .cli()
        .args(["model", "frobnicate"])
        .run()
        .await?
        .failure(2)?;
    controller
        .cli()
        .args(["model", "ls", "--output", "yaml"])
        .run()
        .await?
        .failure(2)?;

    let unknown = controller
        .cli()
        .args(["model", "show", "nosuchmodel"])
        .run()
        .await?
        .failure(1)?;
    unknown.stderr_has("nosuchmodel")?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompts_are_created_listed_and_shown_by_version() -> TestResult {
    let controller = CliHarness::start().await?;
    let first = controller
        .cli()
        .args([
            "prompt",
            "create",
            "greeter",
            "--text",
            "You are a helpful assistant.",
            "-o",
            "json",
        ])
        .run()
        .await?
        .success()?;
    assert_eq!(number_field(&first.json()?, "/version")?, 1);

    let text_file = controller.scratch("prompt.txt");
    std::fs::write(&text_file, "You are terse.\nAnswer in one line.\n")?;
    let template_file = controller.scratch("template.jinja");
    std::fs::write(
        &template_file,
        "{% for m in messages %}{{ m.content }}{% endfor %}",
    )?;
    let second = controller
        .cli()
        .args(["prompt", "create", "greeter", "--file"])
        .arg_path(&text_file)
        .arg("--chat-template-file")
        .arg_path(&template_file)
        .run()
        .await?
        .success()?;
    second.stdout_has("created prompt greeter version 2")?;

    let listed = controller
        .cli()
        .args(["prompt", "ls", "-o", "json"])
        .run()
        .await?
        .success()?;
    let listed = listed.json()?;
    assert_eq!(text_field(&listed, "/items/0/name")?, "greeter");
    assert_eq!(number_field(&listed, "/items/0/latest_version")?, 2);
    controller
        .cli()
        .args(["prompt", "ls"])
        .run()
        .await?
        .success()?
        .stdout_has("greeter")?;

    let latest = controller
        .cli()
        .args(["prompt", "show", "greeter", "-o", "json"])
        .run()
        .await?
        .success()?;
    let latest = latest.json()?;
    assert_eq!(number_field(&latest, "/version")?, 2);
    assert_eq!(
        text_field(&latest, "/text")?,
        "You are terse.\nAnswer in one line.\n"
    );
    assert!(text_field(&latest, "/chat_template")?.contains("m.content"));

    let old = controller
        .cli()
        .args(["prompt", "show", "greeter@1", "-o", "json"])
        .run()
        .await?
        .success()?;
    assert_eq!(
        text_field(&old.json()?, "/text")?,
        "You are a helpful assistant."
    );
    let table = controller
        .cli()
        .args(["prompt", "show", "greeter@1"])
        .run()
        .await?
        .success()?;
    table.stdout_has("You are a helpful assistant.")?;

    let history = controller
        .cli()
        .args(["prompt", "versions", "greeter", "-o", "json"])
        .run()
        .await?
        .success()?;
    assert_eq!(number_field(&history.json()?, "/items/0/version")?, 2);

    controller
        .cli()
        .args(["prompt", "show", "greeter@9"])
        .run()
        .await?
        .failure(1)?;
    controller
        .cli()
        .args(["prompt", "show", "greeter@latest"])
        .run()
        .await?
        .failure(2)?;
    controller
        .cli()
        .args(["prompt", "create", "greeter"])
        .run()
        .await?
        .failure(2)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_carry_roles_and_are_never_printed_by_mistake() -> TestResult {
    let controller = CliHarness::start().await?;
    let created = controller
        .cli()
        .args([
            "token",
            "create",
            "--subject",
            "ci-pipeline",
            "--role",
            "viewer",
            "--ttl",
            "1h",
        ])
        .run()
        .await?
        .success()?;
    let viewer_token = created.stdout.trim_end_matches('\n');
    assert_eq!(created.stdout.lines().count(), 1, "{created:#?}");
    assert!(
        !viewer_token.is_empty() && !viewer_token.contains(char::is_whitespace),
        "{created:#?}"
    );

    let whoami = controller
        .cli()
        .env("FLOTILLA_TOKEN", viewer_token)
        .args(["whoami", "-o", "json"])
        .run()
        .await?
        .success()?;
    let whoami = whoami.json()?;
    assert_eq!(text_field(&whoami, "/subject")?, "ci-pipeline");
    assert_eq!(text_field(&whoami, "/role")?, "viewer");

    // A viewer may read but not push.
    controller
        .cli()
        .env("FLOTILLA_TOKEN", viewer_token)
        .args(["model", "ls"])
        .run()
        .await?
        .success()?;
    let file = controller.scratch("tiny.gguf");
    std::fs::write(&file, tiny_gguf(5))?;
    let refused = controller
        .cli()
        .env("FLOTILLA_TOKEN", viewer_token)
        .args(["model", "push"])
        .arg_path(&file)
        .args(["--name", "tiny", "--version", "1.0.0"])
        .run()
        .await?
        .failure(1)?;
    refused.stderr_has("has role viewer but this needs operator")?;
    assert!(!refused.stderr.contains(viewer_token), "{refused:#?}");

    let escalation = controller
        .cli()
        .env("FLOTILLA_TOKEN", viewer_token)
        .args(["token", "create", "--subject", "me", "--role", "admin"])
        .run()
        .await?
        .failure(1)?;
    escalation.stderr_has("needs admin")?;

    let json = controller
        .cli()
        .args([
            "token",
            "create",
            "--subject",
            "bot",
            "--role",
            "operator",
            "-o",
            "json",
        ])
        .run()
        .await?
        .success()?;
    let json = json.json()?;
    assert_eq!(text_field(&json, "/role")?, "operator");
    assert!(!text_field(&json, "/token")?.is_empty());

    controller
        .cli()
        .args(["token", "create", "--subject", "x", "--role", "root"])
        .run()
        .await?
        .failure(2)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_or_bad_tokens_are_explained() -> TestResult {
    let controller = CliHarness::start().await?;
    let missing = controller
        .bare_cli()
        .env("FLOTILLA_URL", controller.url())
        .args(["whoami"])
        .run()
        .await?
        .failure(1)?;
    missing
        .stderr_has("missing bearer token")?
        .stderr_has("no API token is configured")?;

    let bad = controller
        .bare_cli()
        .env("FLOTILLA_URL", controller.url())
        .env("FLOTILLA_TOKEN", "not-a-jwt")
        .args(["model", "ls"])
        .run()
        .await?
        .failure(1)?;
    bad.stderr_has("invalid token")?;
    assert!(!bad.stderr.contains("not-a-jwt"), "{bad:#?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_come_from_flags_then_env_then_config_file() -> TestResult {
    let controller = CliHarness::start().await?;
    let unreachable = unused_loopback_url().await?;
    let config_dir = controller.home.path().join("xdg").join("flotilla");
    std::fs::create_dir_all(&config_dir)?;
    let config_file = config_dir.join("config.toml");
    write_private(
        &config_file,
        &format!(
            "url = \"{}\"\ntoken = \"{}\"\n",
            controller.url(),
            controller.admin_token()
        ),
    )?;

    // The file alone is enough.
    let from_file = controller
        .bare_cli()
        .args(["whoami", "-o", "json"])
        .run()
        .await?
        .success()?;
    assert_eq!(text_field(&from_file.json()?, "/role")?, "admin");

    // The environment beats the file, and a flag beats the environment.
    controller
        .bare_cli()
        .env("FLOTILLA_URL", &unreachable)
        .args(["whoami"])
        .run()
        .await?
        .failure(1)?
        .stderr_has(&unreachable)?;
    controller
        .bare_cli()
        .env("FLOTILLA_URL", &unreachable)
        .args(["whoami", "--url", controller.url()])
        .run()
        .await?
        .success()?;
    controller
        .bare_cli()
        .args(["whoami", "--token", "not-a-jwt"])
        .run()
        .await?
        .failure(1)?
        .stderr_has("invalid token")?;

    // Without XDG_CONFIG_HOME the file is looked for under ~/.config.
    let dot_config = controller.home.path().join(".config").join("flotilla");
    std::fs::create_dir_all(&dot_config)?;
    write_private(
        &dot_config.join("config.toml"),
        &format!(
            "url = \"{}\"\ntoken = \"{}\"\n",
            controller.url(),
            controller.admin_token()
        ),
    )?;
    controller
        .bare_cli()
        .env_remove("XDG_CONFIG_HOME")
        .args(["whoami"])
        .run()
        .await?
        .success()?;

    // --config names a file explicitly; it must exist and be valid.
    let elsewhere = controller.scratch("elsewhere.toml");
    write_private(
        &elsewhere,
        &format!(
            "url = \"{}\"\ntoken = \"{}\"\n",
            controller.url(),
            controller.admin_token()
        ),
    )?;
    std::fs::remove_file(&config_file)?;
    controller
        .bare_cli()
        .arg("--config")
        .arg_path(&elsewhere)
        .arg("whoami")
        .run()
        .await?
        .success()?;
    controller
        .bare_cli()
        .args(["--config", "/nonexistent/flotilla.toml", "whoami"])
        .run()
        .await?
        .failure(1)?
        .stderr_has("cannot read config file /nonexistent/flotilla.toml")?;
    let typo = controller.scratch("typo.toml");
    write_private(&typo, "tokn = \"x\"\n")?;
    let typo_run = controller
        .bare_cli()
        .arg("--config")
        .arg_path(&typo)
        .arg("whoami")
        .run()
        .await?
        .failure(1)?;
    typo_run.stderr_has("invalid config file")?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_controller_is_named() -> TestResult {
    let home = tempfile::tempdir()?;
    let unreachable = unused_loopback_url().await?;
    let outcome = Cli::new(home.path())
        .env("FLOTILLA_URL", &unreachable)
        .env("FLOTILLA_TOKEN", "whatever")
        .args(["model", "ls"])
        .run()
        .await?
        .failure(1)?;
    outcome
        .stderr_has("cannot connect to the controller at")?
        .stderr_has(&unreachable)?;

    let invalid = Cli::new(home.path())
        .args(["--url", "localhost:8080", "whoami"])
        .run()
        .await?
        .failure(1)?;
    invalid.stderr_has("invalid controller URL")?;
    Ok(())
}

/// Pushes the real SmolLM2-135M (Q4_1) and checks what the controller read
/// from it, and the digest against an independent blake3 implementation
/// (Python's `blake3` package).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_model_push_matches_an_independent_digest() -> TestResult {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or("the CLI crate has no parent directory")?;
    let model = std::env::var_os("FLOTILLA_TEST_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("models/SmolLM2-135M-Instruct.Q4_1.gguf"));
    if !model.is_file() {
        eprintln!(
            "SKIP: real_model_push_matches_an_independent_digest: no model at {} \
             (run `bash ../shared/fetch-smollm2.sh models/SmolLM2-135M-Instruct.Q4_1.gguf` or set FLOTILLA_TEST_MODEL)",
            model.display()
        );
        return Ok(());
    }
    let Some(python) = python_with_blake3(workspace).await? else {
        eprintln!(
            "SKIP: real_model_push_matches_an_independent_digest: no Python with the blake3 package \
             (set FLOTILLA_PYTHON, or run `python3 -m venv .venv && .venv/bin/pip install blake3`)"
        );
        return Ok(());
    };
    let independent_digest = python_blake3(&python, &model).await?;

    let controller = CliHarness::start().await?;
    let pushed = controller
        .cli()
        .args(["model", "push"])
        .arg_path(&model)
        .args([
            "--name",
            "smollm2-135m-instruct",
            "--version",
            "1.0.0",
            "--output",
            "json",
        ])
        .run()
        .await?
        .success()?;
    let artifact = pushed.json()?;
    assert_eq!(text_field(&artifact, "/architecture")?, "llama");
    assert_eq!(text_field(&artifact, "/quantization")?, "Q4_1");
    let parameters = number_field(&artifact, "/parameter_count")?;
    assert!(
        (130_000_000..140_000_000).contains(&parameters),
        "parameter_count {parameters}"
    );
    assert_eq!(
        number_field(&artifact, "/size_bytes")?,
        std::fs::metadata(&model)?.len()
    );
    assert_eq!(text_field(&artifact, "/digest")?, independent_digest);

    let resolved = controller
        .cli()
        .args([
            "model",
            "resolve",
            "smollm2-135m-instruct",
            "--quant",
            "Q4_1",
            "-o",
            "json",
        ])
        .run()
        .await?
        .success()?;
    assert_eq!(
        text_field(&resolved.json()?, "/artifact/digest")?,
        independent_digest
    );
    Ok(())
}

/// `FLOTILLA_PYTHON`, else the workspace's `.venv`, else `python3`: the first
/// that can import `blake3`.
async fn python_with_blake3(workspace: &Path) -> TestResult<Option<PathBuf>> {
    let candidates: Vec<PathBuf> = match std::env::var_os("FLOTILLA_PYTHON") {
        Some(python) => vec![PathBuf::from(python)],
        None => vec![workspace.join(".venv/bin/python"), PathBuf::from("python3")],
    };
    for python in candidates {
        let probe = tokio::process::Command::new(&python)
            .args(["-c", "import blake3"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .status();
        if let Ok(Ok(status)) = tokio::time::timeout(RUN_DEADLINE, probe).await
            && status.success()
        {
            return Ok(Some(python));
        }
    }
    Ok(None)
}

async fn python_blake3(python: &Path, file: &Path) -> TestResult<String> {
    const SCRIPT: &str = "import sys, blake3\n\
        h = blake3.blake3()\n\
        with open(sys.argv[1], 'rb') as f:\n\
        \x20   for chunk in iter(lambda: f.read(1 << 20), b''):\n\
        \x20       h.update(chunk)\n\
        print(h.hexdigest())\n";
    let run = tokio::process::Command::new(python)
        .arg("-c")
        .arg(SCRIPT)
        .arg(file)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(RUN_DEADLINE, run)
        .await
        .map_err(|_| "python blake3 timed out")??;
    if !output.status.success() {
        return Err(format!(
            "python blake3 failed: {}",
            String::from_utf8_lossy(&output.stderr)
        )
        .into());
    }
    let digest = String::from_utf8(output.stdout)?.trim().to_owned();
    if digest.len() != 64 {
        return Err(format!("python blake3 printed {digest:?}").into());
    }
    Ok(digest)
}

/// A loopback URL nothing listens on: bind port 0, note it, release it.
async fn unused_loopback_url() -> TestResult<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    drop(listener);
    Ok(format!("http://{address}"))
}

fn write_private(path: &Path, contents: &str) -> TestResult {
    std::fs::write(path, contents)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_tokens_print_alone_and_nodes_list_as_json() -> TestResult {
    let controller = CliHarness::start().await?;
    let created = controller
        .cli()
        .args(["node", "token", "create", "--ttl", "30m", "--uses", "3"])
        .run()
        .await?
        .success()?;
    assert_eq!(created.stdout.lines().count(), 1, "{created:#?}");
    let token = created.stdout.trim_end_matches('\n');
    assert!(token.starts_with("flt_"), "{created:#?}");
    created.stderr_has("3 enrolment(s)")?;

    let as_json = controller
        .cli()
        .args(["node", "token", "create", "-o", "json"])
        .run()
        .await?
        .success()?
        .json()?;
    assert_eq!(number_field(&as_json, "/uses")?, 1);
    assert!(text_field(&as_json, "/token")?.starts_with("flt_"));

    let listed = controller
        .cli()
        .args(["node", "ls", "--output", "json"])
        .run()
        .await?
        .success()?
        .json()?;
    assert_eq!(field(&listed, "/items")?, &serde_json::json!([]));

    let missing = controller
        .cli()
        .args(["node", "approve", "edge-404"])
        .run()
        .await?
        .failure(1)?;
    missing.stderr_has("node edge-404 not found")?;
    controller
        .cli()
        .args(["node", "show", "edge-404"])
        .run()
        .await?
        .failure(1)?
        .stderr_has("node edge-404 not found")?;
    controller
        .cli()
        .args(["node", "token", "create", "--uses", "0"])
        .run()
        .await?
        .failure(2)?;
    Ok(())
}

/// Enrolments over gRPC are in the audit log with `flotilla events`,
/// refused ones included, under the bootstrap token's id.
#[tokio::test]
async fn grpc_enrolments_are_in_the_audit_log() -> TestResult {
    let controller = CliHarness::start().await?;
    let token = controller
        .cli()
        .args(["node", "token", "create", "--uses", "1"])
        .run()
        .await?
        .success()?;
    let token = token.stdout.trim().to_owned();
    enrol(&controller, &token, "edge-1").await?;
    assert!(
        enrol(&controller, &token, "edge-2").await.is_err(),
        "a spent token enrolled a second node"
    );
    let events = controller
        .cli()
        .args(["events", "--action", "grpc", "-o", "json"])
        .run()
        .await?
        .success()?
        .json()?;
    let events = field(&events, "/items")?
        .as_array()
        .cloned()
        .unwrap_or_default();
    let about = |node: &str| {
        events
            .iter()
            .find(|event| event["node"] == node)
            .cloned()
            .unwrap_or_default()
    };
    let enrolled = about("edge-1");
    assert_eq!(text_field(&enrolled, "/action")?, "grpc Fleet/Enroll");
    assert_eq!(text_field(&enrolled, "/message")?, "enrolled as active");
    assert!(
        text_field(&enrolled, "/actor")?.starts_with("bootstrap-token/"),
        "{enrolled:#}"
    );
    let refused = about("edge-2");
    assert!(
        text_field(&refused, "/message")?.starts_with("refused: "),
        "{refused:#}"
    );
    assert_eq!(
        text_field(&refused, "/actor")?,
        text_field(&enrolled, "/actor")?
    );
    Ok(())
}

/// Enrols `name` (labels site=lab) over gRPC, as an agent would.
async fn enrol(harness: &CliHarness, token: &str, name: &str) -> TestResult {
    harness
        .controller
        .fleet_client()
        .await?
        .enroll(flotilla_proto::fleet::v1::EnrollRequest {
            labels: [("site".to_owned(), "lab".to_owned())].into(),
            inventory: None,
            agent_version: "test".to_owned(),
            ..enroll_request(token, name)
        })
        .await?;
    Ok(())
}

#[tokio::test]
async fn fleet_commands_assign_label_cordon_drain_and_show() -> TestResult {
    let controller = CliHarness::start().await?;
    let file = controller.scratch("tiny.gguf");
    std::fs::write(&file, tiny_gguf(2))?;
    controller
        .cli()
        .args(["model", "push"])
        .arg_path(&file)
        .args(["--name", "tiny", "--version", "1.0.0"])
        .run()
        .await?
        .success()?;
    let token = controller
        .cli()
        .args(["node", "token", "create", "--uses", "2"])
        .run()
        .await?
        .success()?;
    let token = token.stdout.trim().to_owned();
    enrol(&controller, &token, "edge-1").await?;
    enrol(&controller, &token, "edge-2").await?;

    // A selector reaches both nodes; a node's own assignment wins.
    let change = controller
        .cli()
        .args([
            "assign",
            "--selector",
            "site=lab",
            "--model",
            "tiny",
            "--version",
            "1.0.0",
            "-o",
            "json",
        ])
        .run()
        .await?
        .success()?
        .json()?;
    let first = number_field(&change, "/assignment/generation")?;
    assert_eq!(
        field(&change, "/nodes_changed")?.as_array().map(Vec::len),
        Some(2)
    );
    controller
        .cli()
        .args([
            "assign",
            "--node",
            "edge-1",
            "--model",
            "tiny",
            "--version",
            "^1",
        ])
        .run()
        .await?
        .success()?
        .stdout_has("edge-1")?;
    let assignments = controller
        .cli()
        .args(["assignment", "ls", "-o", "json"])
        .run()
        .await?
        .success()?
        .json()?;
    assert_eq!(
        field(&assignments, "/items")?.as_array().map(Vec::len),
        Some(2)
    );
    controller
        .cli()
        .args(["node", "ls"])
        .run()
        .await?
        .success()?
        .stdout_has("READY")?
        .stdout_has("tiny")?;

    // Relabelled out of the selector: nothing to serve, a newer generation.
    let relabelled = controller
        .cli()
        .args([
            "node",
            "label",
            "edge-2",
            "site=paris",
            "gpu=l4",
            "-o",
            "json",
        ])
        .run()
        .await?
        .success()?
        .json()?;
    assert_eq!(text_field(&relabelled, "/labels/site")?, "paris");
    assert!(field(&relabelled, "/assignment")?.is_null());
    assert!(number_field(&relabelled, "/desired_generation")? > first);
    let unlabelled = controller
        .cli()
        .args(["node", "label", "edge-2", "gpu-", "-o", "json"])
        .run()
        .await?
        .success()?
        .json()?;
    assert!(field(&unlabelled, "/labels/gpu").is_err());

    // Cordon, uncordon, drain.
    let cordoned = controller
        .cli()
        .args(["node", "cordon", "edge-1", "-o", "json"])
        .run()
        .await?
        .success()?
        .json()?;
    assert_eq!(text_field(&cordoned, "/status")?, "cordoned");
    assert!(
        !field(&cordoned, "/assignment")?.is_null(),
        "cordoning keeps it"
    );
    let back = controller
        .cli()
        .args(["node", "uncordon", "edge-1", "-o", "json"])
        .run()
        .await?
        .success()?
        .json()?;
    assert_eq!(text_field(&back, "/status")?, "active");
    let drained = controller
        .cli()
        .args(["node", "drain", "edge-1", "-o", "json"])
        .run()
        .await?
        .success()?
        .json()?;
    assert_eq!(text_field(&drained, "/status")?, "cordoned");
    assert!(field(&drained, "/assignment")?.is_null());
    controller
        .cli()
        .args(["node", "show", "edge-1"])
        .run()
        .await?
        .success()?
        .stdout_has("cordoned")?;

    // Removing, and the mistakes an operator can make.
    controller
        .cli()
        .args(["unassign", "--selector", "site=lab"])
        .run()
        .await?
        .success()?;
    controller
        .cli()
        .args(["unassign", "--selector", "site=lab"])
        .run()
        .await?
        .failure(1)?
        .stderr_has("no assignment")?;
    controller
        .cli()
        .args([
            "assign",
            "--node",
            "edge-1",
            "--model",
            "nope",
            "--version",
            "1.0.0",
        ])
        .run()
        .await?
        .failure(1)?
        .stderr_has("model nope not found")?;
    controller
        .cli()
        .args([
            "assign",
            "--node",
            "edge-1",
            "--selector",
            "a=b",
            "--model",
            "tiny",
            "--version",
            "1.0.0",
        ])
        .run()
        .await?
        .failure(2)?;
    controller
        .cli()
        .args(["node", "label", "edge-404", "a=b"])
        .run()
        .await?
        .failure(1)?
        .stderr_has("node edge-404 not found")?;
    Ok(())
}
