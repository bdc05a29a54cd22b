//! Room deletion by an admin (`DELETE /_synapse/admin/v2/rooms/{roomId}`):
//! block the room, make every local member leave (optionally into a new
//! room that says why), move or drop its aliases, then purge it.
//!
//! A deletion is a task with a `delete_id`, stored before it starts and
//! after every step, so it survives a restart and goes on from the step it
//! was at (`resume_room_deletions`). Each step can run twice safely.

use std::{collections::HashMap, sync::Arc};

use estuary_core::{Error, Result, time::now_millis};
use estuary_storage::{Table, codec::Json};
use ruma::{OwnedRoomId, OwnedUserId, RoomId};
use serde::{Deserialize, Serialize};

use crate::{Services, storage_error::StorageResultExt};

const DELETIONS_KEY: &str = "room_deletions";
/// Finished deletions are kept this long for status queries (as Synapse: a day).
const KEEP_FINISHED_MS: u64 = 24 * 3600 * 1000;

const DEFAULT_ROOM_NAME: &str = "Content Violation Notification";
const DEFAULT_MESSAGE: &str =
    "Sharing illegal content on this server is not permitted and rooms in violation will be blocked.";

/// What the admin asked for.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DeletionRequest {
    pub room_id: OwnedRoomId,
    pub requester: OwnedUserId,
    pub block: bool,
    pub purge: bool,
    /// A local user who creates a room the members are moved to.
    pub new_room_user_id: Option<OwnedUserId>,
    pub room_name: Option<String>,
    pub message: Option<String>,
    /// Purge even if some local user could not be made to leave.
    #[serde(default)]
    pub force_purge: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Scheduled,
    Active,
    Complete,
    Failed,
}

/// The steps, in order; `step` is the next one to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    Block,
    NewRoom,
    Leave,
    Aliases,
    Purge,
    Done,
}

/// Synapse's `shutdown_room` result.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ShutdownResult {
    pub kicked_users: Vec<OwnedUserId>,
    pub failed_to_kick_users: Vec<OwnedUserId>,
    pub local_aliases: Vec<String>,
    pub new_room_id: Option<OwnedRoomId>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Deletion {
    pub delete_id: String,
    pub request: DeletionRequest,
    pub status: Status,
    pub step: Step,
    pub shutdown_room: Option<ShutdownResult>,
    pub error: Option<String>,
    pub updated_ts: u64,
}

impl Deletion {
    fn is_finished(&self) -> bool {
        matches!(self.status, Status::Complete | Status::Failed)
    }
}

/// The stored deletions (one row of `global`: there are few), and the
/// history purges under way or done since the start (in memory, as on
/// Synapse: a purge interrupted by a restart is simply asked for again).
pub struct RoomDeletions {
    global: Table<String, Json<HashMap<String, Deletion>>>,
    write: std::sync::Mutex<()>,
    history_purges: std::sync::Mutex<HashMap<String, (Status, Option<String>)>>,
}

impl RoomDeletions {
    pub fn new(db: &estuary_storage::Db) -> Result<Self> {
        Ok(Self {
            global: db.table("global").db()?,
            write: std::sync::Mutex::new(()),
            history_purges: std::sync::Mutex::new(HashMap::new()),
        })
    }

    fn all(&self) -> Result<HashMap<String, Deletion>> {
        Ok(self.global.get(&DELETIONS_KEY.to_owned()).db()?.map(|Json(all)| all).unwrap_or_default())
    }

    fn save(&self, deletion: &Deletion) -> Result<()> {
        self.save_unless(deletion, |_| None).map(|_| ())
    }

    /// Store a new deletion, unless the room has one running or complete
    /// (deleting a room twice gives the first deletion's ID); a failed one
    /// may be tried again.
    fn insert_new(&self, deletion: &Deletion) -> Result<Option<String>> {
        let room_id = deletion.request.room_id.clone();
        self.save_unless(deletion, |all| {
            all.values()
                .find(|d| d.request.room_id == room_id && d.status != Status::Failed)
                .map(|d| d.delete_id.clone())
        })
    }

    /// Save `deletion` unless `existing` (looked at under the lock) names another.
    fn save_unless(
        &self,
        deletion: &Deletion,
        existing: impl FnOnce(&HashMap<String, Deletion>) -> Option<String>,
    ) -> Result<Option<String>> {
        let _guard = self.write.lock().map_err(|_| Error::internal("deletions lock poisoned"))?;
        let mut all = self.all()?;
        if let Some(found) = existing(&all) {
            return Ok(Some(found));
        }
        let now = now_millis();
        all.retain(|_, d| !d.is_finished() || now.saturating_sub(d.updated_ts) < KEEP_FINISHED_MS);
        all.insert(deletion.delete_id.clone(), deletion.clone());
        self.global.put(&DELETIONS_KEY.to_owned(), &Json(all)).db()?;
        Ok(None)
    }

    pub fn by_id(&self, delete_id: &str) -> Result<Option<Deletion>> {
        Ok(self.all()?.remove(delete_id))
    }

    /// A room's deletions, newest first.
    pub fn of_room(&self, room_id: &RoomId) -> Result<Vec<Deletion>> {
        let mut found: Vec<_> = self.all()?.into_values().filter(|d| d.request.room_id == room_id).collect();
        found.sort_by_key(|d| std::cmp::Reverse(d.updated_ts));
        Ok(found)
    }

    /// A history purge's status and, when it failed, why.
    pub fn history_purge(&self, purge_id: &str) -> Option<(Status, Option<String>)> {
        self.history_purges.lock().ok()?.get(purge_id).cloned()
    }

    fn set_history_purge(&self, purge_id: &str, status: Status, error: Option<String>) {
        if let Ok(mut purges) = self.history_purges.lock() {
            purges.insert(purge_id.to_owned(), (status, error));
        }
    }

    fn unfinished(&self) -> Result<Vec<Deletion>> {
        Ok(self.all()?.into_values().filter(|d| !d.is_finished()).collect())
    }
}

impl Services {
    /// Schedule a room's deletion and start it; a room already being (or
    /// already) deleted answers with that deletion's ID.
    pub fn delete_room(self: &Arc<Self>, request: DeletionRequest) -> Result<String> {
        if let Some(user) = &request.new_room_user_id
            && (!self.accounts.is_local(user) || !self.accounts.exists(user)?)
        {
            return Err(Error::invalid_param(format!("User must be our own: {user}")));
        }
        let deletion = Deletion {
            delete_id: crate::accounts::tokens::random_token(16),
            request,
            status: Status::Scheduled,
            step: Step::Block,
            shutdown_room: None,
            error: None,
            updated_ts: now_millis(),
        };
        if let Some(existing) = self.room_deletions.insert_new(&deletion)? {
            return Ok(existing);
        }
        let delete_id = deletion.delete_id.clone();
        self.spawn_deletion(deletion);
        Ok(delete_id)
    }

    /// Purge a room's history before a point, in the background; the
    /// purge's ID answers status queries.
    pub fn purge_room_history(
        self: &Arc<Self>,
        room_id: OwnedRoomId,
        purge: crate::rooms::HistoryPurge,
    ) -> String {
        let purge_id = crate::accounts::tokens::random_token(16);
        self.room_deletions.set_history_purge(&purge_id, Status::Active, None);
        let (services, id) = (self.clone(), purge_id.clone());
        tokio::spawn(async move {
            match services.rooms.purge_history(&room_id, purge).await {
                Ok(_) => services.room_deletions.set_history_purge(&id, Status::Complete, None),
                Err(err) => {
                    tracing::warn!(%room_id, "purging the room's history failed: {err}");
                    services.room_deletions.set_history_purge(&id, Status::Failed, Some(err.to_string()));
                }
            }
        });
        purge_id
    }

    /// Go on with deletions a restart interrupted.
    pub fn resume_room_deletions(self: &Arc<Self>) -> Result<()> {
        for deletion in self.room_deletions.unfinished()? {
            tracing::info!(room_id = %deletion.request.room_id, step = ?deletion.step, "resuming a room deletion");
            self.spawn_deletion(deletion);
        }
        Ok(())
    }

    fn spawn_deletion(self: &Arc<Self>, deletion: Deletion) {
        let services = self.clone();
        tokio::spawn(async move {
            let (room_id, delete_id) = (deletion.request.room_id.clone(), deletion.delete_id.clone());
            if let Err(err) = services.run_deletion(deletion).await {
                tracing::warn!(%room_id, delete_id, "room deletion failed: {err}");
            }
        });
    }

    async fn run_deletion(&self, mut deletion: Deletion) -> Result<()> {
        deletion.status = Status::Active;
        deletion.shutdown_room.get_or_insert_with(ShutdownResult::default);
        while deletion.step != Step::Done {
            if let Err(err) = self.deletion_step(&mut deletion).await {
                deletion.status = Status::Failed;
                deletion.error = Some(err.to_string());
                self.checkpoint(&mut deletion)?;
                return Err(err);
            }
            deletion.step = next(deletion.step);
            if deletion.step == Step::Done {
                deletion.status = Status::Complete;
            }
            self.checkpoint(&mut deletion)?;
        }
        let request = &deletion.request;
        tracing::info!(room_id = %request.room_id, requester = %request.requester, "room deleted");
        Ok(())
    }

    /// Store the deletion's progress, so that a restart goes on from here.
    fn checkpoint(&self, deletion: &mut Deletion) -> Result<()> {
        deletion.updated_ts = now_millis();
        self.room_deletions.save(deletion)
    }

    async fn deletion_step(&self, deletion: &mut Deletion) -> Result<()> {
        let request = deletion.request.clone();
        let room_id = &request.room_id;
        let known = self.rooms.room(room_id)?.is_some();
        let has_new_room = deletion.shutdown_room.as_ref().is_some_and(|s| s.new_room_id.is_some());
        match deletion.step {
            Step::Block if request.block => self.rooms.set_blocked(room_id, Some(&request.requester)),
            Step::NewRoom if known && !has_new_room => match &request.new_room_user_id {
                Some(creator) => self.notice_room(creator, deletion).await,
                None => Ok(()),
            },
            Step::Leave if known => self.make_local_members_leave(deletion).await,
            Step::Aliases if known => {
                let shutdown = deletion.shutdown_room.get_or_insert_with(ShutdownResult::default);
                self.move_aliases(&request, shutdown)
            }
            Step::Purge if request.purge && known => {
                let remaining = self.local_members(room_id)?;
                if !remaining.is_empty() && !request.force_purge {
                    return Err(Error::forbidden(format!(
                        "Local users are still in the room ({}); purge with force_purge",
                        remaining.len()
                    )));
                }
                self.rooms.purge_room(room_id).await.map(|_| ())
            }
            _ => Ok(()),
        }
    }

    /// This server's users in the room: joined, invited or knocking.
    fn local_members(&self, room_id: &RoomId) -> Result<Vec<OwnedUserId>> {
        let mut members = Vec::new();
        for membership in ["join", "invite", "knock"] {
            members.extend(self.rooms.members_with_membership(room_id, membership)?);
        }
        members.retain(|user| self.accounts.is_local(user));
        Ok(members)
    }

    /// The room the members of a deleted room are moved to, with the
    /// admin's message; stored as soon as it exists, so that a restart does
    /// not create a second one.
    async fn notice_room(&self, creator: &ruma::UserId, deletion: &mut Deletion) -> Result<()> {
        let request = deletion.request.clone();
        let create = crate::rooms::CreateRoom {
            preset: Some(crate::rooms::Preset::PublicChat),
            name: Some(request.room_name.clone().unwrap_or_else(|| DEFAULT_ROOM_NAME.to_owned())),
            // The members moved in may read, not write.
            power_level_content_override: serde_json::json!({"events_default": 50}).as_object().cloned(),
            ..Default::default()
        };
        let new_room = self.rooms.create_room(creator, create).await?;
        deletion.shutdown_room.get_or_insert_with(ShutdownResult::default).new_room_id =
            Some(new_room.clone());
        self.checkpoint(deletion)?;
        let body = request.message.clone().unwrap_or_else(|| DEFAULT_MESSAGE.to_owned());
        let content = serde_json::json!({"msgtype": "m.text", "body": body});
        let message = estuary_events::PduTemplate::message("m.room.message", content);
        self.rooms.send(&new_room, creator, message, None).await?;
        Ok(())
    }

    /// Every local member leaves, and with a new room is joined to it;
    /// progress is stored after each member.
    async fn make_local_members_leave(&self, deletion: &mut Deletion) -> Result<()> {
        let room_id = deletion.request.room_id.clone();
        for user in self.local_members(&room_id)? {
            let left = self.rooms.leave(&room_id, &user, Some("This room has been deleted".to_owned())).await;
            let shutdown = deletion.shutdown_room.get_or_insert_with(ShutdownResult::default);
            match left {
                Ok(()) => {
                    if let Some(new_room) = &shutdown.new_room_id
                        && let Err(err) = self.rooms.join(new_room, &user, None, Default::default()).await
                    {
                        tracing::warn!(%user, %new_room, "could not move a member to the new room: {err}");
                    }
                    if !shutdown.kicked_users.contains(&user) {
                        shutdown.kicked_users.push(user);
                    }
                }
                Err(err) => {
                    tracing::warn!(%user, %room_id, "could not make a member leave a deleted room: {err}");
                    if !shutdown.failed_to_kick_users.contains(&user) {
                        shutdown.failed_to_kick_users.push(user);
                    }
                }
            }
            self.checkpoint(deletion)?;
        }
        Ok(())
    }

    /// This server's aliases of the room move to the new room (or go), and
    /// the room leaves the directory.
    fn move_aliases(&self, request: &DeletionRequest, shutdown: &mut ShutdownResult) -> Result<()> {
        let room_id = &request.room_id;
        for alias in self.rooms.room_aliases(room_id)? {
            self.rooms.delete_alias(&alias, &request.requester, true)?;
            if let (Some(new_room), Some(owner)) = (&shutdown.new_room_id, &request.new_room_user_id) {
                self.rooms.put_alias(&alias, new_room, owner)?;
            }
            if !shutdown.local_aliases.contains(&alias.to_string()) {
                shutdown.local_aliases.push(alias.to_string());
            }
        }
        self.rooms.set_public(room_id, false)
    }
}

fn next(step: Step) -> Step {
    match step {
        Step::Block => Step::NewRoom,
        Step::NewRoom => Step::Leave,
        Step::Leave => Step::Aliases,
        Step::Aliases => Step::Purge,
        Step::Purge | Step::Done => Step::Done,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use estuary_core::{Config, time::now_millis};
    use estuary_storage::Db;
    use ruma::UserId;

    use super::{Deletion, DeletionRequest, ShutdownResult, Status, Step};
    use crate::{Services, rooms::CreateRoom};

    /// A deletion a restart interrupted (stored as active, its next step
    /// the members' leave) is finished by `resume_room_deletions`.
    #[tokio::test]
    async fn an_interrupted_deletion_goes_on_from_its_step() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), &Default::default()).unwrap();
        let services = Arc::new(Services::build(Arc::new(Config::default()), db).unwrap());
        let alice = UserId::parse("@alice:localhost").unwrap();
        let room_id = services.rooms.create_room(&alice, CreateRoom::default()).await.unwrap();
        let request = DeletionRequest {
            room_id: room_id.clone(),
            requester: UserId::parse("@admin:localhost").unwrap(),
            block: false,
            purge: true,
            new_room_user_id: None,
            room_name: None,
            message: None,
            force_purge: false,
        };
        let interrupted = Deletion {
            delete_id: "interrupted".to_owned(),
            request,
            status: Status::Active,
            step: Step::Leave,
            shutdown_room: Some(ShutdownResult::default()),
            error: None,
            updated_ts: now_millis(),
        };
        services.room_deletions.save(&interrupted).unwrap();
        services.resume_room_deletions().unwrap();
        let mut finished = None;
        for _ in 0..100 {
            let deletion = services.room_deletions.by_id("interrupted").unwrap().unwrap();
            if deletion.status == Status::Complete {
                finished = Some(deletion);
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let finished = finished.expect("the deletion finished");
        assert_eq!(finished.shutdown_room.unwrap().kicked_users, vec![alice.clone()]);
        assert!(services.rooms.room(&room_id).unwrap().is_none(), "the room is purged");
        // Only alice's leave stays, for her clients' next sync.
        assert_eq!(services.rooms.memberships(&alice).unwrap(), vec![(room_id.clone(), "leave".to_owned())]);
        let stub =
            services.rooms.out_of_band_membership(&alice, &room_id).unwrap().expect("the leave is kept");
        assert!(services.rooms.stored(&stub.event_id).unwrap().is_some());
    }
}
