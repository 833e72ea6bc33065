//! Watching the config files for edits, without waking the daemon when nothing happens.
//!
//! The directories of the config files are watched (editors save by writing a new file and renaming
//! it over the old one, which a watch on the file itself would lose), and events are filtered down
//! to the files the config consists of and `*.toml` files in the include directories. inotify
//! delivers events to a blocked thread; nothing ticks while the files are quiet, so an idle daemon
//! sleeps until its next renewal timer. Bursts of events (an editor's write + rename + chmod) are
//! merged by [`settle`].

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::Watcher as _;
use tokio::sync::mpsc;
use tracing::warn;

use crate::config::Config;

/// How long the files must be quiet before a burst of events counts as one edit.
pub const SETTLE: Duration = Duration::from_millis(300);

/// Keeps the watch alive; dropping it stops watching.
pub struct ConfigWatcher {
    _watcher: notify::RecommendedWatcher,
}

/// Watch the files of `cfg`; every relevant event sends `()` on `tx` (dropped when the channel is
/// full: one pending notice is enough). `None`, with a warning, when watching is impossible.
pub fn watch_config(cfg: &Config, tx: mpsc::Sender<()>) -> Option<ConfigWatcher> {
    let files: HashSet<PathBuf> = cfg
        .files
        .iter()
        .map(|f| std::fs::canonicalize(f).unwrap_or_else(|_| f.clone()))
        .collect();
    let include_dirs: HashSet<PathBuf> = cfg
        .include_dirs
        .iter()
        .map(|d| std::fs::canonicalize(d).unwrap_or_else(|_| d.clone()))
        .collect();
    let mut dirs: HashSet<PathBuf> = files
        .iter()
        .filter_map(|f| f.parent().map(Path::to_path_buf))
        .collect();
    dirs.extend(include_dirs.iter().cloned());

    let relevant = move |p: &Path| {
        files.contains(p)
            || (p.extension().is_some_and(|x| x == "toml")
                && p.parent().is_some_and(|d| include_dirs.contains(d)))
    };
    let handler = move |res: notify::Result<notify::Event>| {
        let Ok(event) = res else { return };
        if event.kind.is_access() {
            return;
        }
        if event.paths.iter().any(|p| relevant(p)) {
            let _ = tx.try_send(());
        }
    };
    let mut watcher = match notify::recommended_watcher(handler) {
        Ok(w) => w,
        Err(e) => {
            warn!(error = %e, "cannot watch the config files; send SIGHUP (systemctl reload certkeeper) after edits");
            return None;
        }
    };
    for dir in dirs {
        if let Err(e) = watcher.watch(&dir, notify::RecursiveMode::NonRecursive) {
            warn!(dir = %dir.display(), error = %e, "cannot watch a config directory; send SIGHUP after edits");
        }
    }
    Some(ConfigWatcher { _watcher: watcher })
}

/// After a first notice, wait until no further notice arrives for [`SETTLE`] (bounded to a few
/// seconds, so a file rewritten in a loop still gets reloaded).
pub async fn settle(rx: &mut mpsc::Receiver<()>) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while tokio::time::Instant::now() < deadline {
        match tokio::time::timeout(SETTLE, rx.recv()).await {
            Ok(Some(())) => continue,
            _ => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg_in(dir: &Path) -> Config {
        let main = dir.join("certkeeper.toml");
        std::fs::create_dir_all(dir.join("conf.d")).unwrap();
        std::fs::write(
            &main,
            format!(
                "state_dir = \"{}/state\"\ninclude = [\"conf.d/*.toml\"]\n",
                dir.display()
            ),
        )
        .unwrap();
        crate::config::load(&main).unwrap()
    }

    #[tokio::test]
    async fn edits_by_rename_and_new_includes_are_noticed_other_files_are_not() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = cfg_in(tmp.path());
        let (tx, mut rx) = mpsc::channel(1);
        let _w = watch_config(&cfg, tx).expect("watching works here");

        // an unrelated file in the same directory: no notice
        std::fs::write(tmp.path().join("notes.txt"), "x").unwrap();
        assert!(
            tokio::time::timeout(Duration::from_millis(400), rx.recv())
                .await
                .is_err()
        );

        // an editor's save: write a temp file, rename it over the config
        let tmpfile = tmp.path().join(".certkeeper.toml.swp");
        std::fs::write(
            &tmpfile,
            std::fs::read(tmp.path().join("certkeeper.toml")).unwrap(),
        )
        .unwrap();
        std::fs::rename(&tmpfile, tmp.path().join("certkeeper.toml")).unwrap();
        tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("rename noticed");
        settle(&mut rx).await;

        // a new file in conf.d
        std::fs::write(tmp.path().join("conf.d/www.toml"), "").unwrap();
        tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("new include noticed");
    }
}
