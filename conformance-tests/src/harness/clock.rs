//! A wall clock of their own for some processes (a server, a program under
//! test), to step the clock lease expiry follows without touching the
//! machine's.
//!
//! The processes run with libfaketime preloaded, reading its offset from a
//! file on every call (`FAKETIME_NO_CACHE`), so a step takes effect at once.
//! The monotonic clock stays real (`DONT_FAKE_MONOTONIC`): only the wall
//! clock steps, as it does when NTP or an operator sets the time.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use super::HarnessError;

/// The library, under a directory of `/usr/lib` (Debian puts it in the
/// multiarch one, e.g. `x86_64-linux-gnu`) or of these.
const LIBRARY: &str = "faketime/libfaketime.so.1";
const LIBRARY_DIRS: &[&str] = &["/usr/lib", "/usr/local/lib"];
const OFFSET_FILE: &str = "faketime.offset";

/// A wall clock that the processes started with its
/// [`environment`](FakeClock::environment) follow, stepped with
/// [`set_offset`](FakeClock::set_offset).
#[derive(Debug)]
pub struct FakeClock {
    server: &'static str,
    library: PathBuf,
    offset_file: PathBuf,
}

impl FakeClock {
    /// A clock reading real time, its offset file in `dir` (which must
    /// outlive the processes).
    ///
    /// # Errors
    ///
    /// [`HarnessError::Unavailable`] when libfaketime is not installed.
    pub fn new(dir: &Path) -> Result<Self, HarnessError> {
        Self::for_server("clock", dir)
    }

    /// As [`new`](Self::new), naming `server` in errors.
    pub(super) fn for_server(server: &'static str, dir: &Path) -> Result<Self, HarnessError> {
        let clock = FakeClock {
            server,
            library: find_library(server)?,
            offset_file: dir.join(OFFSET_FILE),
        };
        clock.write(0)?;
        Ok(clock)
    }

    /// The environment that makes a process follow this clock.
    pub fn environment(&self) -> Vec<(OsString, OsString)> {
        vec![
            ("LD_PRELOAD".into(), self.library.clone().into()),
            (
                "FAKETIME_TIMESTAMP_FILE".into(),
                self.offset_file.clone().into(),
            ),
            ("FAKETIME_NO_CACHE".into(), "1".into()),
            ("DONT_FAKE_MONOTONIC".into(), "1".into()),
        ]
    }

    /// Sets the wall clock to real time plus `offset_secs` (negative:
    /// behind), at once, for every process following it.
    ///
    /// # Errors
    ///
    /// [`HarnessError::Io`] if the offset file cannot be written.
    pub fn set_offset(&self, offset_secs: i64) -> Result<(), HarnessError> {
        self.write(offset_secs)
    }

    /// Writes the offset to a new file and renames it into place, so no
    /// process reads a half-written one.
    fn write(&self, offset_secs: i64) -> Result<(), HarnessError> {
        let next = self.offset_file.with_extension("next");
        let io = |context: String| {
            let server = self.server;
            move |error| HarnessError::io(server, context, error)
        };
        std::fs::write(&next, format!("{offset_secs:+}\n"))
            .map_err(io(format!("writing {}", next.display())))?;
        // A server may run as another account: it must read the file.
        std::fs::set_permissions(&next, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .map_err(io(format!("opening {} to all", next.display())))?;
        std::fs::rename(&next, &self.offset_file)
            .map_err(io(format!("renaming {}", next.display())))
    }
}

fn find_library(server: &'static str) -> Result<PathBuf, HarnessError> {
    let multiarch_dirs = std::fs::read_dir("/usr/lib")
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path());
    LIBRARY_DIRS
        .iter()
        .map(PathBuf::from)
        .chain(multiarch_dirs)
        .map(|dir| dir.join(LIBRARY))
        .find(|path| path.is_file())
        .ok_or_else(|| HarnessError::Unavailable {
            server,
            reason: "libfaketime is not installed (install the libfaketime package) to step \
                     the server's clock"
                .to_owned(),
        })
}
