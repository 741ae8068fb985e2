//! How the program fails, through the built binary: an unreachable backend
//! or refused credentials are reported within about the store timeout, with
//! their cause, and no password reaches stdout or stderr on any path, debug
//! logs included.

use std::net::SocketAddr;
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use conformance_tests::fault_proxy::{FaultMode, FaultProxy};
use conformance_tests::harness::{
    EtcdServer, RedisServer, or_skip, pick_free_port, shared_postgres,
};

/// The password the URLs of these tests carry.
const SECRET: &str = "S3CRETpw";
/// The password the servers of these tests want instead.
const RIGHT_PASSWORD: &str = "rightpw";
/// A PostgreSQL role no server here has.
const NO_SUCH_ROLE: &str = "dlock_no_such_role";
/// What an error may take: the default store timeout (1 s), process start
/// and a margin. Before the fix a refused PostgreSQL connection took 5 s.
const PROMPT: Duration = Duration::from_secs(3);

/// `dlock ARGS` with debug logs on, the default lock file in a scratch
/// directory and no `DLOCK_URL`, unless `env_url` sets one.
fn dlock(args: &[String], env_url: Option<&str>) -> Output {
    let state = tempfile::tempdir().unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_dlock"));
    command
        .args(args)
        .env("RUST_LOG", "debug")
        .env("XDG_STATE_HOME", state.path())
        .env_remove("DLOCK_URL")
        .stdin(Stdio::null());
    if let Some(url) = env_url {
        command.env("DLOCK_URL", url);
    }
    command.output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|arg| (*arg).to_owned()).collect()
}

/// `127.0.0.1:PORT` where nothing listens.
fn closed_port() -> String {
    format!("127.0.0.1:{}", pick_free_port().unwrap())
}

/// `dlock status` and `dlock run` on `url` with `flags`: (exit code,
/// stderr, elapsed) of each.
fn status_and_run(url: &str, flags: &[&str]) -> Vec<(Option<i32>, String, Duration)> {
    let commands = [
        [&["status", "--backend", url][..], flags, &["id"]].concat(),
        [&["run", "--backend", url][..], flags, &["id", "--", "true"]].concat(),
    ];
    commands
        .iter()
        .map(|args| {
            let start = Instant::now();
            let output = dlock(&strings(args), None);
            (output.status.code(), text(&output.stderr), start.elapsed())
        })
        .collect()
}

/// Both commands on `url` exit 69 within [`PROMPT`], saying `cause`.
fn assert_prompt_failure(url: &str, cause: &str) {
    for (code, stderr, elapsed) in status_and_run(url, &[]) {
        assert_eq!(code, Some(69), "{url}: {stderr}");
        assert!(elapsed < PROMPT, "{url}: took {elapsed:?}: {stderr}");
        assert!(stderr.contains(cause), "{url}: no {cause:?} in {stderr}");
    }
}

#[test]
fn an_unreachable_postgres_or_refused_credentials_are_reported_at_once_with_the_cause() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let closed = closed_port();
    assert_prompt_failure(
        &format!("postgres://app@{closed}/db"),
        &format!("cannot connect to {closed} as \"app\": Connection refused"),
    );
    assert_prompt_failure(
        "postgres://app@no-such-host.invalid:5432/db",
        "cannot connect to no-such-host.invalid:5432 as \"app\": failed to lookup address information",
    );
    let Some(server) = or_skip(runtime.block_on(shared_postgres())) else {
        return;
    };
    let addr = server.addr();
    assert_prompt_failure(
        &format!("postgres://{NO_SUCH_ROLE}@{addr}/postgres"),
        &format!(
            "store refused credentials: postgres: cannot connect to {addr} as \"{NO_SUCH_ROLE}\": role \"{NO_SUCH_ROLE}\" does not exist (SQLSTATE 28000)"
        ),
    );
    // A server that accepts the connection and never answers.
    let proxy = runtime.block_on(FaultProxy::start(addr)).unwrap();
    proxy.set_mode(FaultMode::BlackHole);
    let via = proxy.listen_addr();
    assert_prompt_failure(
        &format!("postgres://app@{via}/db"),
        &format!(
            "store timed out: postgres: cannot connect to {via} as \"app\": no answer within 1s"
        ),
    );
}

#[test]
fn an_unreachable_redis_or_etcd_is_reported_at_once() {
    let closed = closed_port();
    assert_prompt_failure(&format!("redis://{closed}"), "Connection refused");
    assert_prompt_failure(
        "redis://no-such-host.invalid:6379",
        "failed to lookup address information",
    );
    assert_prompt_failure(&format!("redis+cluster://{closed}"), "Connection refused");
    assert_prompt_failure(&format!("etcd://{closed}"), "tcp connect error");
    assert_prompt_failure("etcd://no-such-host.invalid:2379", "dns error");
}

#[test]
fn an_unwritable_sqlite_file_is_reported_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    // A directory where the database file should be.
    let path = dir.path().join("locks.db");
    std::fs::create_dir(&path).unwrap();
    assert_prompt_failure(
        &format!("sqlite:{}", path.display()),
        &format!(
            "sqlite: cannot open the database {}: Is a directory",
            path.display()
        ),
    );
    // A file where its directory should be.
    let file = dir.path().join("file");
    std::fs::write(&file, "").unwrap();
    assert_prompt_failure(
        &format!("sqlite:{}/locks.db", file.display()),
        &format!("sqlite: cannot create the directory {}", file.display()),
    );
}

/// One run of the program and what it must end with.
struct Case {
    args: Vec<String>,
    /// `DLOCK_URL`, when the URL comes from the environment.
    env_url: Option<String>,
    expect: i32,
}

/// How a family of schemes takes passwords.
#[derive(Clone, Copy)]
enum Family {
    Postgres,
    Redis,
    Etcd,
}

impl Family {
    /// `scheme://` URLs of `user` on `authority` with the secret in every
    /// position the scheme accepts, and `query` (`a=b&c=d`, or empty).
    fn urls(
        self,
        scheme: &str,
        user: &str,
        authority: &str,
        path: &str,
        query: &str,
    ) -> Vec<String> {
        let and = |first: String| {
            if query.is_empty() {
                first
            } else {
                format!("{first}&{query}")
            }
        };
        let plain_query = if query.is_empty() {
            String::new()
        } else {
            format!("?{query}")
        };
        let mut urls = vec![format!(
            "{scheme}://{user}:{SECRET}@{authority}{path}{plain_query}"
        )];
        match self {
            Family::Postgres => {
                for parameter in ["password", "sslpassword"] {
                    urls.push(format!(
                        "{scheme}://{user}@{authority}{path}?{}",
                        and(format!("{parameter}={SECRET}"))
                    ));
                }
            }
            Family::Redis => {
                urls.push(format!(
                    "{scheme}://:{SECRET}@{authority}{path}{plain_query}"
                ));
                urls.push(format!(
                    "{scheme}://{SECRET}@{authority}{path}{plain_query}"
                ));
                let path = if path.is_empty() { "/" } else { path };
                urls.push(format!(
                    "{scheme}://{authority}{path}?{}",
                    and(format!("password={SECRET}"))
                ));
            }
            Family::Etcd => {}
        }
        urls
    }
}

/// `dlock status` and `dlock run` on `url` with `flags`, both ending with
/// `expect`.
fn both(url: &str, flags: &[&str], expect: i32) -> [Case; 2] {
    let case = |args: Vec<&str>| Case {
        args: strings(&args),
        env_url: None,
        expect,
    };
    [
        case([&["status", "--backend", url][..], flags, &["id"]].concat()),
        case([&["run", "--backend", url][..], flags, &["id", "--", "true"]].concat()),
    ]
}

/// The paths that fail before or without reaching a server, for every
/// password position of `scheme`: a URL that does not parse, options the
/// builder refuses, a table where none is kept, a missing command (with
/// the URL in `DLOCK_URL`), a server that is not there.
fn offline_cases(family: Family, scheme: &str, cases: &mut Vec<Case>) {
    let user = match family {
        Family::Postgres => NO_SUCH_ROLE,
        Family::Redis => "app",
        Family::Etcd => "root",
    };
    let path = match family {
        Family::Postgres => "/db",
        Family::Redis | Family::Etcd => "",
    };
    let long_prefix = "x".repeat(1024);
    let bad_table = match family {
        Family::Postgres => "no such",
        Family::Redis | Family::Etcd => "locks",
    };
    let bad_urls = match family {
        Family::Postgres => vec![
            family.urls(scheme, user, "127.0.0.1:notaport", path, ""),
            family.urls(scheme, user, "127.0.0.1", path, "sslmode=bogus"),
        ],
        Family::Redis => vec![family.urls(scheme, user, "127.0.0.1:notaport", path, "")],
        Family::Etcd => vec![family.urls(scheme, user, "127.0.0.1:2379", path, "bogus=1")],
    };
    // `//` forgotten: the rest must not be taken for a path or a database.
    let no_slashes = format!("{scheme}:{user}:{SECRET}@127.0.0.1:1{path}");
    for url in bad_urls.concat().into_iter().chain([no_slashes]) {
        cases.extend(both(&url, &[], 64));
    }
    for url in family.urls(scheme, user, &closed_port(), path, "") {
        cases.extend(both(&url, &[], 69));
        cases.extend(both(&url, &["--table", bad_table], 64));
        cases.push(Case {
            args: strings(&[
                "run",
                "--backend",
                &url,
                "--heartbeat",
                "60s",
                "id",
                "--",
                "true",
            ]),
            env_url: None,
            expect: 64,
        });
        cases.push(Case {
            args: strings(&["status", "--backend", &url, "--prefix", &long_prefix, "id"]),
            env_url: None,
            expect: 64,
        });
        cases.push(Case {
            args: strings(&["run", "id"]),
            env_url: Some(url.clone()),
            expect: 64,
        });
    }
}

/// Servers that refuse the secret: PostgreSQL has no role of the URLs,
/// Redis and etcd want another password.
struct RefusingServers {
    /// The server's address and the test binary's database on it.
    postgres: Option<(SocketAddr, String)>,
    redis: Option<RedisServer>,
    etcd: Option<EtcdServer>,
}

impl RefusingServers {
    async fn start() -> Self {
        let postgres = or_skip(shared_postgres().await)
            .map(|server| (server.addr(), format!("/{}", server.database())));
        let redis = match or_skip(RedisServer::start().await) {
            Some(server) if !server.is_external() => {
                server
                    .command(&["CONFIG", "SET", "requirepass", RIGHT_PASSWORD])
                    .await
                    .unwrap();
                Some(server)
            }
            _ => None,
        };
        let etcd = match or_skip(EtcdServer::start().await) {
            Some(server) if !server.is_external() => {
                let mut client =
                    dlock::etcd::etcd_client::Client::connect(server.endpoints(), None)
                        .await
                        .unwrap();
                client.user_add("root", RIGHT_PASSWORD, None).await.unwrap();
                client.user_grant_role("root", "root").await.unwrap();
                client.auth_enable().await.unwrap();
                Some(server)
            }
            _ => None,
        };
        Self {
            postgres,
            redis,
            etcd,
        }
    }

    fn cases(&self, cases: &mut Vec<Case>) {
        if let Some((addr, database)) = &self.postgres {
            for scheme in ["postgres", "postgresql"] {
                let authority = addr.to_string();
                for url in Family::Postgres.urls(scheme, NO_SUCH_ROLE, &authority, database, "") {
                    cases.extend(both(&url, &[], 69));
                }
                // Trust authentication takes any password: the paths that
                // succeed print nothing secret either.
                for url in Family::Postgres.urls(scheme, "postgres", &authority, database, "") {
                    let table = ["--table", "dlock_cli_secrets"];
                    cases.push(Case {
                        args: strings(
                            &[&["status", "--backend", &url][..], &table, &["id"]].concat(),
                        ),
                        env_url: None,
                        expect: 0,
                    });
                    cases.push(Case {
                        args: strings(
                            &[
                                &["run", "--backend", &url, "--wait", "30s"][..],
                                &table,
                                &["id", "--", "true"],
                            ]
                            .concat(),
                        ),
                        env_url: None,
                        expect: 0,
                    });
                }
            }
        }
        if let Some(server) = &self.redis {
            let authority = server.addr().to_string();
            for url in Family::Redis.urls("redis", "app", &authority, "", "") {
                cases.extend(both(&url, &[], 69));
            }
        }
        if let Some(server) = &self.etcd {
            let authority = server.addr().unwrap().to_string();
            for url in Family::Etcd.urls("etcd", "root", &authority, "", "") {
                // etcd refuses with gRPC InvalidArgument ("authentication
                // failed"), which lock-etcd reports as refused credentials,
                // as the other backends do.
                cases.extend(both(&url, &[], 69));
            }
        }
    }
}

#[test]
fn no_password_reaches_the_output_on_any_path() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let servers = runtime.block_on(RefusingServers::start());
    let mut cases = Vec::new();
    for scheme in ["postgres", "postgresql"] {
        offline_cases(Family::Postgres, scheme, &mut cases);
    }
    for scheme in ["redis", "rediss", "redis+cluster", "rediss+cluster"] {
        offline_cases(Family::Redis, scheme, &mut cases);
    }
    for scheme in ["etcd", "etcds"] {
        offline_cases(Family::Etcd, scheme, &mut cases);
    }
    servers.cases(&mut cases);
    // The scheme forgotten: `app` is no backend.
    cases.extend(both(&format!("app:{SECRET}@127.0.0.1:5432/db"), &[], 64));

    let pending = Mutex::new(cases.into_iter());
    let failures = Mutex::new(Vec::new());
    let debug_lines = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..8 {
            scope.spawn(|| {
                loop {
                    let Some(case) = pending.lock().unwrap().next() else {
                        return;
                    };
                    let output = dlock(&case.args, case.env_url.as_deref());
                    let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
                    let shown = case.env_url.as_deref().unwrap_or("");
                    let mut problems = Vec::new();
                    if output.status.code() != Some(case.expect) {
                        problems.push(format!(
                            "exit {:?}, not {}",
                            output.status.code(),
                            case.expect
                        ));
                    }
                    if stdout.contains(SECRET) || stderr.contains(SECRET) {
                        problems.push("the password was printed".to_owned());
                    }
                    if case.expect != 0 && stderr.trim().is_empty() {
                        problems.push("no message".to_owned());
                    }
                    debug_lines.fetch_add(stderr.matches("DEBUG").count(), Ordering::Relaxed);
                    if !problems.is_empty() {
                        failures.lock().unwrap().push(format!(
                            "dlock {:?} {shown}: {}\nstdout: {stdout}\nstderr: {stderr}",
                            case.args,
                            problems.join(", ")
                        ));
                    }
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    assert!(
        debug_lines.into_inner() > 0,
        "RUST_LOG=debug showed no debug output"
    );
}
