//! The file registry: which files exist (name, size, chunk hashes) and which online user
//! holds which chunks. The tracker never sees file bytes.
//!
//! A file's description is durable (SQLite) so a name keeps meaning the same content across
//! restarts. Holdings live only as long as the holder's session: a client announces what
//! it holds when it logs in (`Register` with its chunk list), so the registry never offers
//! a chunk from someone who cannot serve it now.
//!
//! Downloaders *watch* the file they are downloading (from their `Locate` until `Unwatch`
//! or logout): every change in who holds what is pushed to them as it happens (`Holders`,
//! `HolderGone`), and of each other: a watcher is announced to the others as a holder of
//! no chunk yet (`Holders` with an empty list), since downloaders trade verified blocks
//! long before the tracker hears of a whole chunk. So leechers that start together find
//! each other at once, and a seeder that logs in mid-download is used at once.

use std::collections::{BTreeSet, HashMap, HashSet};

use wire::{
    Event, FileMeta, FileName, Gone, Holder, Refusal, Reply, ServerMsg, UserName, MAX_LISTED,
    MAX_LISTED_PER_CHUNK, MAX_LOCATED,
};

use crate::clock::Millis;
use crate::cluster::Change;
use crate::state::{listed, Outcome, Then, Tracker};
use crate::store::Cmd;

/// File names one user may register. Each is durable (a database row, and memory for as
/// long as the tracker runs), so without a bound one user could reserve names without
/// end; a person's shared folder is far smaller.
pub const MAX_FILES_PER_USER: u32 = 1_000;

/// Unheld names released per sweep at most, so a burst of them costs bounded work under
/// the lock (the sweeper runs every second).
const RELEASE_STEP: usize = 100;

pub(crate) struct FileEntry {
    pub meta: FileMeta,
    /// Who registered it: only they may replace or withdraw it. `None` for names kept
    /// from before owners were recorded (only release ends those).
    pub owner: Option<UserName>,
    /// Online user → chunks they hold (0-based). Never holds an empty set.
    pub holders: HashMap<UserName, BTreeSet<u32>>,
    /// Online users downloading this file, told of every change in `holders`.
    pub watchers: HashSet<UserName>,
    /// Since when nobody holds any of it; `None` while someone does.
    pub unheld_since: Option<Millis>,
}

impl FileEntry {
    pub fn new(meta: FileMeta, owner: Option<UserName>) -> Self {
        Self {
            meta,
            owner,
            holders: HashMap::new(),
            watchers: HashSet::new(),
            unheld_since: None,
        }
    }
}

fn unknown(name: &FileName) -> Reply {
    Reply::Refused(Refusal::UnknownFile { name: name.clone() })
}

fn bad_chunk(chunk: u32, count: u32) -> Reply {
    Reply::Refused(Refusal::BadChunk { chunk, count })
}

/// Every chunk number in `chunks` names one of a file's `count` chunks; else the refusal
/// for the first that does not.
fn in_range(chunks: &[u32], count: u32) -> Result<(), Refusal> {
    match chunks.iter().find(|&&c| c >= count) {
        Some(&bad) => Err(Refusal::BadChunk { chunk: bad, count }),
        None => Ok(()),
    }
}

fn conflict(registered: &FileMeta, meta: &FileMeta) -> Reply {
    Reply::Refused(Refusal::FileConflict {
        name: meta.name().clone(),
        same_content: registered.size() == meta.size() && registered.sha256() == meta.sha256(),
        chunks: registered.chunk_count(),
    })
}

impl Tracker {
    pub(crate) fn register(
        &mut self,
        me: &UserName,
        meta: FileMeta,
        have: Vec<u32>,
        now: Millis,
    ) -> Outcome {
        let count = meta.chunk_count();
        if let Err(refused) = in_range(&have, count) {
            return Outcome::Reply(Reply::Refused(refused));
        }
        let name = meta.name().clone();
        let mut replaced = false;
        let mut new = false;
        match self.files.get(&name) {
            Some(entry) if entry.meta == meta => {}
            Some(entry) if entry.owner.as_ref() == Some(me) => {
                // The owner's new version (edited, or split differently): the name now
                // means it, and whoever held or fetched the old one is told.
                self.persist(Cmd::PutFile {
                    meta: meta.clone(),
                    owner: me.clone(),
                });
                self.end_name(&name, &Gone::Replaced { by: me.clone() }, Some(me));
                self.files
                    .insert(name.clone(), FileEntry::new(meta.clone(), Some(me.clone())));
                replaced = true;
            }
            Some(entry) => return Outcome::Reply(conflict(&entry.meta, &meta)),
            None => {
                let owned = self.owned.get(me).copied().unwrap_or(0);
                if owned >= MAX_FILES_PER_USER {
                    return Outcome::Reply(Reply::Refused(Refusal::TooManyFiles {
                        limit: MAX_FILES_PER_USER,
                    }));
                }
                new = true;
                *self.owned.entry(me.clone()).or_default() += 1;
                self.files
                    .insert(name.clone(), FileEntry::new(meta.clone(), Some(me.clone())));
            }
        }
        // A new name is told to the other trackers once the store says it is ours
        // (`registered_everywhere`): another tracker may have given it away meanwhile.
        if replaced {
            self.share(Change::Named {
                meta: meta.clone(),
                owner: me.clone(),
            });
        }
        self.add_holdings(me, &name, have, !new);
        self.note_unheld(&name, now);
        let reply = Reply::Registered {
            name: name.clone(),
            size: meta.size(),
            chunks: count,
            replaced,
        };
        if new {
            // The name is the owner's from now on; if that cannot be stored it is
            // withdrawn again (`register_failed`).
            let cmd = Cmd::PutFile {
                meta: meta.clone(),
                owner: me.clone(),
            };
            self.wait_for(cmd, Then::Registered { reply, meta })
        } else if replaced {
            // The replacement's write was recorded above, ahead of what it caused.
            self.acked(reply)
        } else {
            Outcome::Reply(reply)
        }
    }

    /// A new name `me` registered could not be stored: withdrawn again, as if `me` had
    /// unregistered it (unless it changed meanwhile), so memory and store agree. `taken`:
    /// the store has it as someone else's (left as it is there).
    pub(crate) fn register_failed(&mut self, me: &UserName, meta: &FileMeta, taken: bool) {
        let name = meta.name();
        let ours = self
            .files
            .get(name)
            .is_some_and(|e| e.meta == *meta && e.owner.as_ref() == Some(me));
        if !ours {
            return;
        }
        // Only here: a new name is told to the other trackers once stored.
        if !taken {
            self.persist(Cmd::DeleteFile { name: name.clone() });
        }
        let why = Gone::Withdrawn { by: me.clone() };
        if let Some(gone) = self.end_name(name, &why, Some(me)) {
            self.disown(gone.owner.as_ref());
        }
    }

    /// A returning holder's chunks of a name that still means `meta`; nothing else.
    pub(crate) fn announce(
        &mut self,
        me: &UserName,
        meta: FileMeta,
        have: Vec<u32>,
        now: Millis,
    ) -> Reply {
        let name = meta.name().clone();
        match self.files.get(&name) {
            None => return unknown(&name),
            Some(entry) if entry.meta != meta => return conflict(&entry.meta, &meta),
            Some(_) => {}
        }
        let count = meta.chunk_count();
        if let Err(refused) = in_range(&have, count) {
            return Reply::Refused(refused);
        }
        self.add_holdings(me, &name, have, true);
        self.note_unheld(&name, now);
        Reply::Noted
    }

    /// `unregister`: the owner withdraws the name; anyone else stops sharing their copy.
    pub(crate) fn unregister(&mut self, me: &UserName, name: &FileName, now: Millis) -> Outcome {
        let Some(entry) = self.files.get_mut(name) else {
            return Outcome::Reply(unknown(name));
        };
        if entry.owner.as_ref() == Some(me) {
            self.persist(Cmd::DeleteFile { name: name.clone() });
            let why = Gone::Withdrawn { by: me.clone() };
            self.share(Change::Unnamed {
                name: name.clone(),
                why: why.clone(),
            });
            if let Some(gone) = self.end_name(name, &why, Some(me)) {
                self.disown(gone.owner.as_ref());
            }
            return self.acked(Reply::Unregistered {
                name: name.clone(),
                for_everyone: true,
            });
        }
        if !self.leave(me, name, now) {
            return Outcome::Reply(Reply::Refused(Refusal::NotSharing { name: name.clone() }));
        }
        Outcome::Reply(Reply::Unregistered {
            name: name.clone(),
            for_everyone: false,
        })
    }

    /// `me` stops sharing and downloading `name` (not its owner); `false` if it did
    /// neither.
    pub(crate) fn leave(&mut self, me: &UserName, name: &FileName, now: Millis) -> bool {
        let Some(entry) = self.files.get_mut(name) else {
            return false;
        };
        let held = entry.holders.remove(me).is_some();
        let watched = entry.watchers.remove(me);
        if !held && !watched {
            return false;
        }
        self.share_mine(
            me,
            Change::Leaves {
                user: me.clone(),
                name: name.clone(),
            },
        );
        self.fellow_gone(me, name);
        self.note_unheld(name, now);
        true
    }

    /// `change`, made by `me`, for the other trackers if `me` is online here (a change
    /// applied here for a user of another tracker came from there).
    fn share_mine(&mut self, me: &UserName, change: Change) {
        if self.sessions.contains_key(me) {
            self.share(change);
        }
    }

    /// Another tracker's user registered `meta`'s name, or replaced what it meant.
    pub(crate) fn named_elsewhere(&mut self, meta: FileMeta, owner: UserName, now: Millis) {
        let name = meta.name().clone();
        match self.files.get(&name) {
            Some(entry) if entry.meta == meta => return,
            Some(_) => {
                let gone = self.end_name(&name, &Gone::Replaced { by: owner.clone() }, None);
                self.disown(gone.and_then(|g| g.owner).as_ref());
            }
            None => {}
        }
        *self.owned.entry(owner.clone()).or_default() += 1;
        self.files
            .insert(name.clone(), FileEntry::new(meta, Some(owner)));
        self.note_unheld(&name, now);
    }

    /// Another tracker's user withdrew the name.
    pub(crate) fn unnamed_elsewhere(&mut self, name: &FileName, why: &Gone) {
        if let Some(gone) = self.end_name(name, why, None) {
            self.disown(gone.owner.as_ref());
        }
    }

    /// Another tracker's user holds `chunks` of `name` (checked there; checked again here
    /// against the name as this tracker knows it).
    pub(crate) fn holds_elsewhere(&mut self, user: &UserName, name: &FileName, chunks: Vec<u32>) {
        let Some(entry) = self.files.get(name) else {
            return;
        };
        if in_range(&chunks, entry.meta.chunk_count()).is_ok() {
            self.add_holdings(user, name, chunks, false);
        }
    }

    /// `me`'s new name `meta` was stored as theirs: the other trackers are told, with what
    /// `me` holds of it (unless it changed meanwhile).
    pub(crate) fn registered_everywhere(&mut self, me: &UserName, meta: &FileMeta) {
        let name = meta.name();
        let Some(entry) = self.files.get(name) else {
            return;
        };
        if entry.meta != *meta || entry.owner.as_ref() != Some(me) {
            return;
        }
        let held: Vec<u32> = entry
            .holders
            .get(me)
            .map(|h| h.iter().copied().collect())
            .unwrap_or_default();
        self.share(Change::Named {
            meta: meta.clone(),
            owner: me.clone(),
        });
        if !held.is_empty() {
            self.share_mine(
                me,
                Change::Holds {
                    user: me.clone(),
                    name: name.clone(),
                    chunks: held,
                },
            );
        }
    }

    /// `reply` once everything recorded so far is durable. (Not undone if it cannot be:
    /// others were told already. The name is then gone, or replaced, until the tracker
    /// restarts; the owner is told the server could not store it and may do it again.)
    fn acked(&mut self, reply: Reply) -> Outcome {
        self.wait_for_recorded(Then::Ack(reply))
    }

    /// The name stops meaning its file: every holder and watcher but `except` is told
    /// why, and the entry is returned. The caller updates the store.
    fn end_name(
        &mut self,
        name: &FileName,
        why: &Gone,
        except: Option<&UserName>,
    ) -> Option<FileEntry> {
        let entry = self.files.remove(name)?;
        if let Some(since) = entry.unheld_since {
            self.unheld.remove(&(since, name.clone()));
        }
        let told: BTreeSet<&UserName> = entry
            .holders
            .keys()
            .chain(entry.watchers.iter())
            .filter(|u| Some(*u) != except)
            .collect();
        if !told.is_empty() {
            let event = ServerMsg::Event(Event::FileGone {
                name: name.clone(),
                why: why.clone(),
            });
            if let Some(frame) = crate::state::encode(&event) {
                for u in told {
                    self.push_frame(u, &frame);
                }
            }
        }
        Some(entry)
    }

    /// One name less counts toward `owner`'s quota.
    fn disown(&mut self, owner: Option<&UserName>) {
        if let Some(n) = owner.and_then(|o| self.owned.get_mut(o)) {
            *n = n.saturating_sub(1);
        }
    }

    /// If nobody holds `name` now, it starts counting toward its release (durably, so a
    /// restart does not reset the count).
    fn note_unheld(&mut self, name: &FileName, now: Millis) {
        let Some(entry) = self.files.get_mut(name) else {
            return;
        };
        if !entry.holders.is_empty() || entry.unheld_since.is_some() {
            return;
        }
        entry.unheld_since = Some(now);
        self.unheld.insert((now, name.clone()));
        self.persist(Cmd::SetUnheld {
            name: name.clone(),
            since: Some(now),
        });
    }

    /// Someone holds `name` again: it no longer counts toward its release.
    fn note_held(&mut self, name: &FileName) {
        let Some(entry) = self.files.get_mut(name) else {
            return;
        };
        let Some(since) = entry.unheld_since.take() else {
            return;
        };
        self.unheld.remove(&(since, name.clone()));
        self.persist(Cmd::SetUnheld {
            name: name.clone(),
            since: None,
        });
    }

    /// Releases names nobody has held for `release_after` (oldest first, a bounded step a
    /// second): anyone may register them again. Their watchers are told.
    pub(crate) fn release_unheld(&mut self, now: Millis) {
        if now < self.next_release {
            return;
        }
        self.next_release = now.plus(std::time::Duration::from_secs(1));
        let after = self.rules.release_after;
        let due: Vec<FileName> = self
            .unheld
            .iter()
            .take_while(|(since, _)| since.plus(after) <= now)
            .take(RELEASE_STEP)
            .map(|(_, name)| name.clone())
            .collect();
        let why = Gone::Released {
            after_secs: after.as_secs(),
        };
        for name in due {
            self.persist(Cmd::DeleteFile { name: name.clone() });
            tracing::debug!(%name, "released: nobody held it");
            if let Some(gone) = self.end_name(&name, &why, None) {
                self.disown(gone.owner.as_ref());
            }
        }
    }

    pub(crate) fn have_chunk(&mut self, me: &UserName, name: &FileName, chunk: u32) -> Reply {
        let Some(entry) = self.files.get_mut(name) else {
            return unknown(name);
        };
        let count = entry.meta.chunk_count();
        if chunk >= count {
            return bad_chunk(chunk, count);
        }
        self.add_holdings(me, name, vec![chunk], true);
        Reply::Noted
    }

    /// `me` holds `chunks` of the registered file `name` (checked in range); watchers hear
    /// of the ones that are new.
    /// `share`: the other trackers are told (not for a name not yet known to be ours).
    fn add_holdings(&mut self, me: &UserName, name: &FileName, chunks: Vec<u32>, share: bool) {
        let Some(entry) = self.files.get_mut(name) else {
            return;
        };
        if chunks.is_empty() {
            return;
        }
        let held = entry.holders.entry(me.clone()).or_default();
        let new: Vec<u32> = chunks.into_iter().filter(|&c| held.insert(c)).collect();
        self.involve(me, name);
        self.note_held(name);
        if new.is_empty() {
            return;
        }
        if share {
            self.share_mine(
                me,
                Change::Holds {
                    user: me.clone(),
                    name: name.clone(),
                    chunks: new.clone(),
                },
            );
        }
        let event = Event::Holders {
            name: name.clone(),
            user: me.clone(),
            chunks: new,
        };
        self.tell_watchers(me, name, event);
    }

    /// Pushes `event` about holder `holder` to the watchers of `name` that may see them:
    /// not `holder` itself, not users `holder` has blocked.
    fn tell_watchers(&mut self, holder: &UserName, name: &FileName, event: Event) {
        let Some(entry) = self.files.get(name) else {
            return;
        };
        let targets: Vec<UserName> = entry
            .watchers
            .iter()
            .filter(|w| *w != holder && !self.has_blocked(holder, w))
            .cloned()
            .collect();
        if targets.is_empty() {
            return;
        }
        let Some(frame) = crate::state::encode(&ServerMsg::Event(event)) else {
            return;
        };
        for w in targets {
            self.push_frame(&w, &frame);
        }
    }

    /// `me` stops watching `name`.
    pub(crate) fn unwatch(&mut self, me: &UserName, name: &FileName) -> Reply {
        let Some(entry) = self.files.get_mut(name) else {
            return Reply::Noted;
        };
        if !entry.watchers.remove(me) {
            return Reply::Noted;
        }
        let holds = entry.holders.contains_key(me);
        self.share_mine(
            me,
            Change::Unwatches {
                user: me.clone(),
                name: name.clone(),
            },
        );
        if !holds {
            self.fellow_gone(me, name);
        }
        Reply::Noted
    }

    /// `me` downloads `name` from now on: told of every change in who holds it, and told
    /// to its other downloaders as a fellow (a holder of no whole chunk yet).
    pub(crate) fn watch(&mut self, me: &UserName, name: &FileName) {
        let Some(entry) = self.files.get_mut(name) else {
            return;
        };
        if !entry.watchers.insert(me.clone()) {
            return;
        }
        let fellow = !entry.holders.contains_key(me);
        self.involve(me, name);
        self.share_mine(
            me,
            Change::Watches {
                user: me.clone(),
                name: name.clone(),
            },
        );
        if fellow {
            let event = Event::Holders {
                name: name.clone(),
                user: me.clone(),
                chunks: Vec::new(),
            };
            self.tell_watchers(me, name, event);
        }
    }

    /// `me` no longer downloads `name` and holds none of it: the other downloaders, who
    /// knew of it as a fellow, forget it.
    fn fellow_gone(&mut self, me: &UserName, name: &FileName) {
        let event = Event::HolderGone {
            name: name.clone(),
            user: me.clone(),
        };
        self.tell_watchers(me, name, event);
    }

    /// `me` no longer holds anything of `name`.
    pub(crate) fn withdraw(&mut self, me: &UserName, name: &FileName, now: Millis) -> Reply {
        let Some(entry) = self.files.get_mut(name) else {
            return unknown(name);
        };
        if entry.holders.remove(me).is_some() {
            self.share_mine(
                me,
                Change::Withdraws {
                    user: me.clone(),
                    name: name.clone(),
                },
            );
            let event = Event::HolderGone {
                name: name.clone(),
                user: me.clone(),
            };
            self.tell_watchers(me, name, event);
        }
        self.note_unheld(name, now);
        Reply::Noted
    }

    /// Holders of `name` that `me` may see: not `me`, not users who blocked `me`.
    fn visible_holders<'a>(
        &'a self,
        me: &'a UserName,
        entry: &'a FileEntry,
    ) -> impl Iterator<Item = (&'a UserName, &'a BTreeSet<u32>)> + 'a {
        entry
            .holders
            .iter()
            .filter(move |(u, _)| *u != me && !self.has_blocked(u, me))
    }

    pub(crate) fn search_file(&self, me: &UserName, name: &FileName) -> Reply {
        let (users, more) = match self.files.get(name) {
            Some(entry) => listed(self.visible_holders(me, entry).map(|(u, _)| u), MAX_LISTED),
            None => (Vec::new(), 0),
        };
        Reply::FileHolders {
            name: name.clone(),
            users,
            more,
        }
    }

    pub(crate) fn search_chunk(&self, me: &UserName, name: &FileName, chunks: &[u32]) -> Reply {
        let Some(entry) = self.files.get(name) else {
            return unknown(name);
        };
        let count = entry.meta.chunk_count();
        if let Err(refused) = in_range(chunks, count) {
            return Reply::Refused(refused);
        }
        // Each chunk once: a request naming one chunk thousands of times costs no more
        // than naming it once (the list is at most a frame, but the reply was per entry).
        let mut asked: Vec<u32> = Vec::with_capacity(chunks.len().min(count as usize));
        let mut seen = BTreeSet::new();
        asked.extend(chunks.iter().copied().filter(|&c| seen.insert(c)));
        let found = asked
            .into_iter()
            .map(|c| {
                let holders = self
                    .visible_holders(me, entry)
                    .filter(|(_, held)| held.contains(&c))
                    .map(|(u, _)| u);
                let (users, more) = listed(holders, MAX_LISTED_PER_CHUNK);
                (c, users, more)
            })
            .collect();
        Reply::ChunkHolders {
            name: name.clone(),
            chunks: found,
        }
    }

    /// Everything needed to download `name`, with a fresh ticket per holder. With `from`,
    /// only that user, refused exactly as `startprivate` would be.
    pub(crate) fn locate(
        &mut self,
        me: &UserName,
        name: &FileName,
        from: Option<&UserName>,
        now: Millis,
    ) -> Reply {
        if !self.files.contains_key(name) {
            return unknown(name);
        }
        if from.is_none() {
            // Registered with the snapshot below, under the same lock: every change after
            // the snapshot reaches the watcher as an event.
            self.watch(me, name);
        }
        let entry = &self.files[name];
        let meta = entry.meta.clone();
        let candidates: Vec<(UserName, Vec<u32>)> = match from {
            Some(user) => {
                let held = entry.holders.get(user).map(|s| s.iter().copied().collect());
                vec![(user.clone(), held.unwrap_or_default())]
            }
            None => {
                let mut all: Vec<(UserName, Vec<u32>)> = self
                    .visible_holders(me, entry)
                    .map(|(u, held)| (u.clone(), held.iter().copied().collect()))
                    .collect();
                // Fellow downloaders that hold no whole chunk yet, each of them visible
                // both ways (blocks flow in both directions).
                all.extend(
                    entry
                        .watchers
                        .iter()
                        .filter(|w| {
                            *w != me
                                && !entry.holders.contains_key(*w)
                                && !self.has_blocked(w, me)
                                && !self.has_blocked(me, w)
                        })
                        .map(|w| (w.clone(), Vec::new())),
                );
                // At most MAX_LOCATED, chosen at random so a big swarm's load spreads;
                // chosen before any ticket is pushed, so the others are not disturbed.
                if all.len() > MAX_LOCATED {
                    use rand::seq::SliceRandom;
                    all.shuffle(&mut rand::rng());
                    all.truncate(MAX_LOCATED);
                }
                all.sort();
                all
            }
        };
        let mut holders = Vec::new();
        for (user, chunks) in candidates {
            match self.introduce(me, &user, now) {
                Ok(intro) => holders.push(Holder {
                    user,
                    addr: intro.addr,
                    ticket: intro.ticket,
                    key: intro.key,
                    via: intro.via,
                    chunks,
                }),
                // A named holder's refusal is the answer; among all holders, an unreachable
                // one is simply left out.
                Err(refusal) if from.is_some() => return Reply::Refused(refusal),
                Err(_) => {}
            }
        }
        Reply::Located { meta, holders }
    }

    /// `me` now holds or watches `name`: its logout must look there.
    fn involve(&mut self, me: &UserName, name: &FileName) {
        self.involved
            .entry(me.clone())
            .or_default()
            .insert(name.clone());
    }

    /// The user's session ended: they can no longer serve anything, nor watch.
    pub(crate) fn forget_holdings(&mut self, user: &UserName, now: Millis) {
        // Only the files the user was involved in: a logout costs what the user did,
        // not the size of the registry.
        let mut held = Vec::new();
        for name in self.involved.remove(user).unwrap_or_default() {
            let Some(entry) = self.files.get_mut(&name) else {
                continue;
            };
            let watched = entry.watchers.remove(user);
            if entry.holders.remove(user).is_some() || watched {
                held.push(name);
            }
        }
        for name in held {
            let event = Event::HolderGone {
                name: name.clone(),
                user: user.clone(),
            };
            self.tell_watchers(user, &name, event);
            self.note_unheld(&name, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::testkit::*;
    use wire::{Digest, Event, Request, Via};

    fn meta(name: &str, fill: u8) -> FileMeta {
        FileMeta::new(
            FileName::new(name).unwrap(),
            25,
            10,
            vec![
                Digest([fill; 32]),
                Digest([fill + 1; 32]),
                Digest([fill + 2; 32]),
            ],
            vec![Digest([fill + 3; 32]); 3],
            Digest([fill; 32]),
        )
        .unwrap()
    }
    fn f(name: &str) -> FileName {
        FileName::new(name).unwrap()
    }
    fn register(m: FileMeta, have: &[u32]) -> Request {
        Request::Register {
            meta: m,
            have: have.to_vec(),
        }
    }

    #[test]
    fn files_shared_through_one_tracker_are_found_and_fetched_through_another() {
        let (mut a, mut b) = (cluster_node(1), cluster_node(2));
        let mut hans = login_p2p(&mut a, "hans", T0, 4001);
        let mut vader = login_p2p(&mut a, "vader", T0, 4004);
        let mut luke = login_p2p(&mut b, "luke", T0, 4002);
        let yoda = login_p2p(&mut b, "yoda", T0, 4003);
        pass(&mut a, &mut b, T0);
        pass(&mut b, &mut a, T0);
        let m = meta("a.bin", 1);
        assert!(matches!(
            req(&mut a, &hans, register(m.clone(), &[0, 1, 2]), T0),
            Reply::Registered { .. }
        ));
        // vader downloads it on hans's tracker.
        assert!(matches!(
            req(
                &mut a,
                &vader,
                Request::Locate {
                    name: f("a.bin"),
                    from: None
                },
                T0
            ),
            Reply::Located { .. }
        ));
        pass(&mut a, &mut b, T0);
        assert_eq!(
            req(&mut b, &luke, Request::SearchFile { name: f("a.bin") }, T0),
            Reply::FileHolders {
                name: f("a.bin"),
                users: vec![u("hans")],
                more: 0
            }
        );
        assert_eq!(
            req(
                &mut b,
                &luke,
                Request::SearchChunk {
                    name: f("a.bin"),
                    chunks: vec![2]
                },
                T0
            ),
            Reply::ChunkHolders {
                name: f("a.bin"),
                chunks: vec![(2, vec![u("hans")], 0)]
            }
        );
        // yoda downloads it through the other tracker: hans (and vader, a fellow
        // downloader) are handed out, and hans is given the same ticket through its own.
        let Reply::Located { meta: got, holders } = req(
            &mut b,
            &yoda,
            Request::Locate {
                name: f("a.bin"),
                from: None,
            },
            T0,
        ) else {
            panic!("not located")
        };
        assert_eq!(got, m);
        let users: Vec<&str> = holders.iter().map(|h| h.user.as_str()).collect();
        assert_eq!(users, ["hans", "vader"]);
        assert_eq!(holders[0].chunks, [0, 1, 2]);
        assert_eq!(holders[0].addr.port(), 4001);
        hans.events();
        vader.events();
        pass(&mut b, &mut a, T0);
        let ticket = holders[0].ticket;
        assert!(
            hans.events().iter().any(|e| matches!(e,
                Event::PrivateTicket { from, ticket: t, .. } if *from == u("yoda") && *t == ticket)),
            "hans was not given yoda's ticket"
        );
        // vader hears of yoda, a fellow downloader on the other tracker, and of luke's
        // chunk as soon as luke has it.
        assert!(matches!(
            req(&mut b, &luke, register(m.clone(), &[1]), T0),
            Reply::Registered { .. }
        ));
        pass(&mut b, &mut a, T0);
        let heard = vader.events();
        assert!(heard.contains(&Event::Holders {
            name: f("a.bin"),
            user: u("yoda"),
            chunks: vec![]
        }));
        assert!(heard.contains(&Event::Holders {
            name: f("a.bin"),
            user: u("luke"),
            chunks: vec![1]
        }));
        // yoda logs out over there: gone from the downloads here too.
        req(&mut b, &yoda, Request::Logout, T0);
        pass(&mut b, &mut a, T0);
        assert!(vader.events().contains(&Event::HolderGone {
            name: f("a.bin"),
            user: u("yoda")
        }));
        // hans withdraws the name: luke, holding a copy on the other tracker, is told.
        luke.events();
        assert!(matches!(
            req(&mut a, &hans, Request::Unregister { name: f("a.bin") }, T0),
            Reply::Unregistered {
                for_everyone: true,
                ..
            }
        ));
        pass(&mut a, &mut b, T0);
        assert!(luke.events().contains(&Event::FileGone {
            name: f("a.bin"),
            why: Gone::Withdrawn { by: u("hans") }
        }));
        assert_eq!(
            req(
                &mut b,
                &luke,
                Request::SearchChunk {
                    name: f("a.bin"),
                    chunks: vec![1]
                },
                T0
            ),
            Reply::Refused(Refusal::UnknownFile { name: f("a.bin") })
        );
    }

    #[test]
    fn register_search_and_conflicts() {
        let mut t = tracker();
        let hans = login_p2p(&mut t, "hans", T0, 4001);
        let yoda = login_p2p(&mut t, "yoda", T0, 4002);
        let luke = login_p2p(&mut t, "luke", T0, 4003);
        assert_eq!(
            req(&mut t, &hans, register(meta("a.bin", 1), &[0, 1, 2]), T0),
            Reply::Registered {
                name: f("a.bin"),
                size: 25,
                chunks: 3,
                replaced: false,
            }
        );
        // Same content again: yoda becomes a holder too.
        assert!(matches!(
            req(&mut t, &yoda, register(meta("a.bin", 1), &[1]), T0),
            Reply::Registered { .. }
        ));
        // Different content under the same name: refused.
        assert_eq!(
            req(&mut t, &luke, register(meta("a.bin", 9), &[0, 1, 2]), T0),
            Reply::Refused(Refusal::FileConflict {
                name: f("a.bin"),
                same_content: false,
                chunks: 3
            })
        );
        assert_eq!(
            req(&mut t, &luke, Request::SearchFile { name: f("a.bin") }, T0),
            Reply::FileHolders {
                name: f("a.bin"),
                users: vec![u("hans"), u("yoda")],
                more: 0,
            }
        );
        assert_eq!(
            req(&mut t, &luke, Request::SearchFile { name: f("nope") }, T0),
            Reply::FileHolders {
                name: f("nope"),
                users: vec![],
                more: 0,
            }
        );
        assert_eq!(
            req(
                &mut t,
                &luke,
                Request::SearchChunk {
                    name: f("a.bin"),
                    chunks: vec![0, 1]
                },
                T0
            ),
            Reply::ChunkHolders {
                name: f("a.bin"),
                chunks: vec![(0, vec![u("hans")], 0), (1, vec![u("hans"), u("yoda")], 0)]
            }
        );
        assert_eq!(
            req(
                &mut t,
                &luke,
                Request::SearchChunk {
                    name: f("a.bin"),
                    chunks: vec![3]
                },
                T0
            ),
            Reply::Refused(Refusal::BadChunk { chunk: 3, count: 3 })
        );
        // luke downloads chunk 2 and says so.
        assert_eq!(
            req(
                &mut t,
                &luke,
                Request::HaveChunk {
                    name: f("a.bin"),
                    chunk: 2
                },
                T0
            ),
            Reply::Noted
        );
        // hans logs out: only what online users hold remains.
        req(&mut t, &hans, Request::Logout, T0);
        let Reply::ChunkHolders { chunks, .. } = req(
            &mut t,
            &yoda,
            Request::SearchChunk {
                name: f("a.bin"),
                chunks: vec![0, 2],
            },
            T0,
        ) else {
            panic!()
        };
        assert_eq!(chunks, vec![(0, vec![], 0), (2, vec![u("luke")], 0)]);
    }

    #[test]
    fn locate_issues_tickets_to_reachable_holders_only() {
        let mut t = tracker();
        let hans = login_p2p(&mut t, "hans", T0, 4001);
        let mut yoda = login_p2p(&mut t, "yoda", T0, 4002);
        let vader = login_p2p(&mut t, "vader", T0, 4003);
        let luke = login_p2p(&mut t, "luke", T0, 4004);
        req(&mut t, &hans, register(meta("a.bin", 1), &[0, 1, 2]), T0);
        req(&mut t, &yoda, register(meta("a.bin", 1), &[2]), T0);
        req(&mut t, &vader, register(meta("a.bin", 1), &[0]), T0);
        req(&mut t, &vader, Request::Block { user: u("luke") }, T0);
        yoda.events();
        let Reply::Located { meta: m, holders } = req(
            &mut t,
            &luke,
            Request::Locate {
                name: f("a.bin"),
                from: None,
            },
            T0,
        ) else {
            panic!()
        };
        assert_eq!(m, meta("a.bin", 1));
        let who: Vec<_> = holders
            .iter()
            .map(|h| (h.user.as_str(), h.chunks.clone()))
            .collect();
        assert_eq!(
            who,
            [("hans", vec![0, 1, 2]), ("yoda", vec![2])],
            "vader blocked luke"
        );
        let yoda_ticket = holders[1].ticket;
        assert_eq!(
            holders[1].key,
            key_of("yoda"),
            "the holder's key, to check it by"
        );
        assert_eq!(
            yoda.events(),
            [Event::PrivateTicket {
                from: u("luke"),
                ticket: yoda_ticket,
                key: key_of("luke"),
                via: Via::Direct,
                addr: "127.0.0.1:4004".parse().unwrap(),
                relay: None,
            }]
        );

        // Named holder: refused like startprivate.
        assert_eq!(
            req(
                &mut t,
                &luke,
                Request::Locate {
                    name: f("a.bin"),
                    from: Some(u("vader"))
                },
                T0
            ),
            Reply::Refused(Refusal::BlockedByRecipient { user: u("vader") })
        );
        assert_eq!(
            req(
                &mut t,
                &luke,
                Request::Locate {
                    name: f("a.bin"),
                    from: Some(u("r2d2"))
                },
                T0
            ),
            Reply::Refused(Refusal::Offline { user: u("r2d2") })
        );
        assert_eq!(
            req(
                &mut t,
                &luke,
                Request::Locate {
                    name: f("zzz"),
                    from: None
                },
                T0
            ),
            Reply::Refused(Refusal::UnknownFile { name: f("zzz") })
        );
    }

    #[test]
    fn watchers_hear_of_every_change_in_holders() {
        let mut t = tracker();
        let hans = login_p2p(&mut t, "hans", T0, 4001);
        let mut luke = login_p2p(&mut t, "luke", T0, 4002);
        let yoda = login_p2p(&mut t, "yoda", T0, 4003);
        let vader = login_p2p(&mut t, "vader", T0, 4004);
        req(&mut t, &hans, register(meta("a.bin", 1), &[0, 1, 2]), T0);
        let locate = Request::Locate {
            name: f("a.bin"),
            from: None,
        };
        assert!(matches!(
            req(&mut t, &luke, locate, T0),
            Reply::Located { .. }
        ));
        luke.events();
        let have = |c| Request::HaveChunk {
            name: f("a.bin"),
            chunk: c,
        };
        // A leecher verifies a chunk; a seeder registers; a chunk already known is news to
        // nobody.
        assert_eq!(req(&mut t, &yoda, have(1), T0), Reply::Noted);
        req(&mut t, &yoda, have(1), T0);
        req(&mut t, &vader, register(meta("a.bin", 1), &[0, 2]), T0);
        assert_eq!(
            luke.events(),
            [
                Event::Holders {
                    name: f("a.bin"),
                    user: u("yoda"),
                    chunks: vec![1]
                },
                Event::Holders {
                    name: f("a.bin"),
                    user: u("vader"),
                    chunks: vec![0, 2]
                },
            ]
        );
        // A holder that blocked the watcher stays invisible to it.
        req(&mut t, &vader, Request::Block { user: u("luke") }, T0);
        req(&mut t, &vader, register(meta("a.bin", 1), &[1]), T0);
        assert_eq!(luke.events(), []);
        // Leaving and withdrawing are told.
        assert_eq!(
            req(&mut t, &yoda, Request::Withdraw { name: f("a.bin") }, T0),
            Reply::Noted
        );
        req(&mut t, &hans, Request::Logout, T0);
        t.flush_presence();
        assert_eq!(
            luke.events(),
            [
                Event::HolderGone {
                    name: f("a.bin"),
                    user: u("yoda")
                },
                Event::HolderGone {
                    name: f("a.bin"),
                    user: u("hans")
                },
                Event::Presence {
                    changes: vec![wire::PresenceChange::LoggedOut(u("hans"))]
                },
            ]
        );
        // After unwatching, nothing more.
        req(&mut t, &luke, Request::Unwatch { name: f("a.bin") }, T0);
        req(&mut t, &yoda, have(0), T0);
        assert_eq!(luke.events(), []);
    }

    #[test]
    fn downloaders_of_a_file_are_told_of_each_other() {
        let mut t = tracker();
        let hans = login_p2p(&mut t, "hans", T0, 4001);
        let mut luke = login_p2p(&mut t, "luke", T0, 4002);
        let mut yoda = login_p2p(&mut t, "yoda", T0, 4003);
        let vader = login_p2p(&mut t, "vader", T0, 4004);
        req(&mut t, &hans, register(meta("a.bin", 1), &[0, 1, 2]), T0);
        let locate = || Request::Locate {
            name: f("a.bin"),
            from: None,
        };
        let users = |r: Reply| match r {
            Reply::Located { holders, .. } => holders
                .into_iter()
                .map(|h| (h.user.to_string(), h.chunks))
                .collect::<Vec<_>>(),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            users(req(&mut t, &luke, locate(), T0)),
            [("hans".to_string(), vec![0, 1, 2])]
        );
        luke.events();
        // The second downloader gets the first as a fellow holding nothing yet, and the
        // first hears of the second.
        assert_eq!(
            users(req(&mut t, &yoda, locate(), T0)),
            [
                ("hans".to_string(), vec![0, 1, 2]),
                ("luke".to_string(), vec![])
            ]
        );
        yoda.events();
        // (luke also gets the ticket yoda will dial it with.)
        let news: Vec<Event> = luke
            .events()
            .into_iter()
            .filter(|e| !matches!(e, Event::PrivateTicket { .. }))
            .collect();
        assert_eq!(
            news,
            [Event::Holders {
                name: f("a.bin"),
                user: u("yoda"),
                chunks: vec![]
            }]
        );
        // A downloader blocked by another is not introduced to it.
        req(&mut t, &vader, Request::Block { user: u("luke") }, T0);
        let seen: Vec<String> = users(req(&mut t, &vader, locate(), T0))
            .into_iter()
            .map(|(u, _)| u)
            .collect();
        assert_eq!(seen, ["hans", "yoda"]);
        // Stopping (or logging out) is told to the others.
        yoda.events();
        req(&mut t, &luke, Request::Unwatch { name: f("a.bin") }, T0);
        assert_eq!(
            yoda.events(),
            [Event::HolderGone {
                name: f("a.bin"),
                user: u("luke")
            }]
        );
    }

    #[test]
    fn descriptions_survive_a_restart_holdings_do_not() {
        let mut t = tracker();
        let hans = login_p2p(&mut t, "hans", T0, 4001);
        req(&mut t, &hans, register(meta("a.bin", 1), &[0, 1, 2]), T0);
        let mut t2 = t.restart(T0);
        let luke = login_p2p(&mut t2, "luke", T0, 4004);
        assert_eq!(
            req(&mut t2, &luke, Request::SearchFile { name: f("a.bin") }, T0),
            Reply::FileHolders {
                name: f("a.bin"),
                users: vec![],
                more: 0,
            }
        );
        assert!(matches!(
            req(&mut t2, &luke, register(meta("a.bin", 9), &[0]), T0),
            Reply::Refused(Refusal::FileConflict { .. })
        ));
    }

    #[test]
    fn searches_and_locates_are_bounded_whatever_is_asked() {
        let mut t = crowd(80);
        let mut holders: Vec<Client> = (0..80)
            .map(|i| login_p2p(&mut t, &format!("p{i:02}"), T0, 5000 + i as u16))
            .collect();
        for h in &holders {
            req(&mut t, h, register(meta("a.bin", 1), &[0, 1, 2]), T0);
        }
        let hans = login(&mut t, "hans", T0);
        for h in &mut holders {
            h.events();
        }
        // One chunk named 5,000 times: one entry, 32 names, and how many more.
        let Reply::ChunkHolders { chunks, .. } = req(
            &mut t,
            &hans,
            Request::SearchChunk {
                name: f("a.bin"),
                chunks: vec![2; 5000],
            },
            T0,
        ) else {
            panic!()
        };
        assert_eq!(chunks.len(), 1);
        let (c, users, more) = &chunks[0];
        assert_eq!((*c, users.len(), *more), (2, MAX_LISTED_PER_CHUNK, 80 - 32));
        // A locate names MAX_LOCATED holders, and only those are sent a ticket.
        let Reply::Located { holders: got, .. } = req(
            &mut t,
            &hans,
            Request::Locate {
                name: f("a.bin"),
                from: None,
            },
            T0,
        ) else {
            panic!()
        };
        assert_eq!(got.len(), MAX_LOCATED);
        let ticketed = holders
            .iter_mut()
            .map(|h| h.events())
            .filter(|events| {
                events
                    .iter()
                    .any(|e| matches!(e, Event::PrivateTicket { .. }))
            })
            .count();
        assert_eq!(ticketed, MAX_LOCATED);
    }

    #[test]
    fn one_user_may_register_only_so_many_names_even_across_a_restart() {
        let mut t = tracker();
        let hans = login_p2p(&mut t, "hans", T0, 4001);
        // 50 ms apart: within the register rate, so only the quota can refuse.
        let at = |i: u32| crate::clock::Millis(T0.0 + 50 * i as u64);
        for i in 0..MAX_FILES_PER_USER {
            let r = req(
                &mut t,
                &hans,
                register(meta(&format!("f{i}"), 1), &[0]),
                at(i),
            );
            assert!(matches!(r, Reply::Registered { .. }), "{r:?}");
        }
        let more = at(MAX_FILES_PER_USER);
        let too_many = Reply::Refused(Refusal::TooManyFiles {
            limit: MAX_FILES_PER_USER,
        });
        assert_eq!(
            req(&mut t, &hans, register(meta("one-more", 1), &[0]), more),
            too_many
        );
        // Holding a name someone else registered costs nothing of one's own quota.
        let luke = login_p2p(&mut t, "luke", T0, 4004);
        let r = req(&mut t, &luke, register(meta("theirs", 1), &[0]), more);
        assert!(matches!(r, Reply::Registered { .. }), "{r:?}");
        let r = req(&mut t, &hans, register(meta("theirs", 1), &[0]), more);
        assert!(matches!(r, Reply::Registered { .. }), "{r:?}");
        // The count is kept with the names.
        let mut t2 = t.restart(more);
        let hans = login_p2p(&mut t2, "hans", more, 4001);
        assert_eq!(
            req(&mut t2, &hans, register(meta("one-more", 1), &[0]), more),
            too_many
        );
    }

    fn gone(why: Gone) -> Event {
        Event::FileGone {
            name: f("a.bin"),
            why,
        }
    }

    #[test]
    fn the_owner_replaces_a_name_and_everyone_on_the_old_version_is_told() {
        let mut t = tracker();
        let hans = login_p2p(&mut t, "hans", T0, 4001);
        let mut yoda = login_p2p(&mut t, "yoda", T0, 4002);
        let mut luke = login_p2p(&mut t, "luke", T0, 4003);
        req(&mut t, &hans, register(meta("a.bin", 1), &[0, 1, 2]), T0);
        req(&mut t, &yoda, register(meta("a.bin", 1), &[0, 1, 2]), T0);
        let locate = Request::Locate {
            name: f("a.bin"),
            from: None,
        };
        req(&mut t, &luke, locate, T0);
        yoda.events();
        luke.events();
        // Only the owner may: yoda's edited copy is a conflict.
        assert!(matches!(
            req(&mut t, &yoda, register(meta("a.bin", 9), &[0, 1, 2]), T0),
            Reply::Refused(Refusal::FileConflict { .. })
        ));
        assert_eq!(
            req(&mut t, &hans, register(meta("a.bin", 9), &[0, 1, 2]), T0),
            Reply::Registered {
                name: f("a.bin"),
                size: 25,
                chunks: 3,
                replaced: true,
            }
        );
        let told = gone(Gone::Replaced { by: u("hans") });
        assert_eq!(yoda.events(), std::slice::from_ref(&told));
        assert_eq!(luke.events(), [told]);
        // The name now means the new version, held by hans alone.
        assert_eq!(
            req(&mut t, &luke, Request::SearchFile { name: f("a.bin") }, T0),
            Reply::FileHolders {
                name: f("a.bin"),
                users: vec![u("hans")],
                more: 0,
            }
        );
        // yoda's old copy is refused at its next announcement.
        let announce = |m| Request::Announce {
            meta: m,
            have: vec![0, 1, 2],
        };
        assert!(matches!(
            req(&mut t, &yoda, announce(meta("a.bin", 1)), T0),
            Reply::Refused(Refusal::FileConflict { .. })
        ));
        assert_eq!(
            req(&mut t, &yoda, announce(meta("a.bin", 9)), T0),
            Reply::Noted
        );
    }

    #[test]
    fn unregister_withdraws_for_everyone_only_from_the_owner() {
        let mut t = tracker();
        let hans = login_p2p(&mut t, "hans", T0, 4001);
        let mut yoda = login_p2p(&mut t, "yoda", T0, 4002);
        let luke = login_p2p(&mut t, "luke", T0, 4003);
        req(&mut t, &hans, register(meta("a.bin", 1), &[0, 1, 2]), T0);
        req(&mut t, &yoda, register(meta("a.bin", 1), &[0, 1, 2]), T0);
        let unregister = || Request::Unregister { name: f("a.bin") };
        assert_eq!(
            req(&mut t, &luke, unregister(), T0),
            Reply::Refused(Refusal::NotSharing { name: f("a.bin") })
        );
        // yoda stops sharing its copy; the name stays.
        assert_eq!(
            req(&mut t, &yoda, unregister(), T0),
            Reply::Unregistered {
                name: f("a.bin"),
                for_everyone: false
            }
        );
        let holders =
            |t: &mut Rig| match req(t, &luke, Request::SearchFile { name: f("a.bin") }, T0) {
                Reply::FileHolders { users, .. } => users,
                other => panic!("{other:?}"),
            };
        assert_eq!(holders(&mut t), [u("hans")]);
        // yoda holds it again, then hans withdraws the name: yoda is told, and anyone may
        // register other content under it; hans's quota has the name back.
        req(&mut t, &yoda, register(meta("a.bin", 1), &[0]), T0);
        yoda.events();
        assert_eq!(
            req(&mut t, &hans, unregister(), T0),
            Reply::Unregistered {
                name: f("a.bin"),
                for_everyone: true
            }
        );
        assert_eq!(yoda.events(), [gone(Gone::Withdrawn { by: u("hans") })]);
        assert_eq!(holders(&mut t), Vec::<UserName>::new());
        assert_eq!(t.owned[&u("hans")], 0);
        assert!(matches!(
            req(&mut t, &luke, register(meta("a.bin", 9), &[0]), T0),
            Reply::Registered {
                replaced: false,
                ..
            }
        ));
        // Withdrawn durably: gone after a restart too.
        let t2 = t.restart(T0);
        assert_eq!(t2.files[&f("a.bin")].meta, meta("a.bin", 9));
    }

    #[test]
    fn a_name_nobody_holds_for_the_release_time_is_released_even_across_a_restart() {
        use crate::clock::Millis;
        let mut t = tracker();
        let hans = login_p2p(&mut t, "hans", T0, 4001);
        req(&mut t, &hans, register(meta("a.bin", 1), &[0, 1, 2]), T0);
        req(&mut t, &hans, register(meta("b.bin", 1), &[0, 1, 2]), T0);
        let at = |ms: u64| Millis(T0.0 + ms);
        let hour = RELEASE_AFTER.as_millis() as u64;
        // hans leaves at +1 s; comes back at +40 min holding b.bin only.
        req(&mut t, &hans, Request::Logout, at(1_000));
        let hans = login_p2p(&mut t, "hans", at(2_400_000), 4001);
        let announce = Request::Announce {
            meta: meta("b.bin", 1),
            have: vec![0],
        };
        assert_eq!(req(&mut t, &hans, announce, at(2_400_000)), Reply::Noted);
        // The tracker restarts at +50 min: a.bin's time without a holder is kept (b.bin,
        // held when it stopped, counts from the restart).
        let mut t = t.restart(at(3_000_000));
        let mut luke = login_p2p(&mut t, "luke", at(3_000_000), 4003);
        let locate = Request::Locate {
            name: f("a.bin"),
            from: None,
        };
        req(&mut t, &luke, locate, at(3_000_000));
        luke.events();
        // (luke stays active; the sweep looks once a second)
        req(&mut t, &luke, Request::Activity, at(hour));
        t.expire(at(hour));
        assert!(t.files.contains_key(&f("a.bin")));
        t.expire(at(1_000 + hour));
        assert!(!t.files.contains_key(&f("a.bin")), "released");
        assert_eq!(
            luke.events(),
            [gone(Gone::Released {
                after_secs: RELEASE_AFTER.as_secs()
            })]
        );
        assert!(t.files.contains_key(&f("b.bin")));
        t.expire(at(3_000_000 + hour));
        assert!(!t.files.contains_key(&f("b.bin")), "released");
        assert_eq!(t.owned[&u("hans")], 0);
        // Released names are gone from the store.
        let t = t.restart(at(3_000_000 + hour));
        assert!(t.files.is_empty());
    }
}
