//! Server notices: messages from the server's admins to a user, sent by a
//! system user into a room of that user's own (tagged `m.server_notice`),
//! where the user may read but not post, as on Synapse.

use estuary_core::error::ErrorKind;
use estuary_core::{Error, Result};
use estuary_events::PduTemplate;
use ruma::{OwnedEventId, OwnedRoomId, OwnedUserId, UserId};
use serde_json::{Value as JsonValue, json};

use crate::{
    Services,
    rooms::{CreateRoom, Txn},
};

impl Services {
    /// The system user that sends notices.
    pub fn server_notices_user(&self) -> OwnedUserId {
        UserId::parse_with_server_name(
            self.config.server_notices_localpart.as_str(),
            &self.config.server_name,
        )
        .expect("server_notices_localpart is a valid localpart")
    }

    /// Send a notice (`event_type`, with `state_key` a state event) to a
    /// local user, creating their notices room the first time. `txn`: the
    /// admin's transaction, so that a retry sends nothing twice.
    pub async fn send_server_notice(
        &self,
        user: &UserId,
        event_type: &str,
        state_key: Option<String>,
        content: JsonValue,
        txn: Option<Txn>,
    ) -> Result<OwnedEventId> {
        if !self.accounts.is_local(user) {
            return Err(Error::invalid_param("Server notices can only be sent to local users"));
        }
        if !self.accounts.exists(user)? {
            return Err(Error::not_found("User not found"));
        }
        let system = self.server_notices_user();
        if !self.accounts.exists(&system)? {
            // An account, so that the system user shows in admin listings
            // (its ID is reserved: nobody can register it).
            self.accounts.insert_system_account(&system).await?;
        }
        let room_id = match self.notices_room(user, &system)? {
            Some(room_id) => room_id,
            None => self.create_notices_room(user, &system).await?,
        };
        let template = match state_key {
            Some(state_key) => PduTemplate::state(event_type, state_key, content),
            None => PduTemplate::message(event_type, content),
        };
        Ok(self.rooms.send(&room_id, &system, template, txn).await?.event_id)
    }

    /// The user's notices room: one the system user is in and the user is
    /// joined or invited to.
    fn notices_room(&self, user: &UserId, system: &UserId) -> Result<Option<OwnedRoomId>> {
        for (room_id, membership) in self.rooms.memberships(user)? {
            if matches!(membership.as_str(), "join" | "invite") && self.rooms.is_joined(system, &room_id)? {
                return Ok(Some(room_id));
            }
        }
        Ok(None)
    }

    async fn create_notices_room(&self, user: &UserId, system: &UserId) -> Result<OwnedRoomId> {
        let create = CreateRoom {
            preset: Some(crate::rooms::Preset::PrivateChat),
            name: Some(self.config.server_notices_room_name.clone()),
            invite: vec![user.to_owned()],
            // Everyone but the system user is below every event's level.
            power_level_content_override: json!({"users_default": -10}).as_object().cloned(),
            ..Default::default()
        };
        let room_id = self.rooms.create_room(system, create).await?;
        let tag = serde_json::value::to_raw_value(&json!({"tags": {"m.server_notice": {}}}))?;
        self.account_data.set_internal(user, Some(&room_id), "m.tag", tag)?;
        tracing::info!(%user, %room_id, "created a server notices room");
        Ok(room_id)
    }

    /// 403 `M_CANNOT_LEAVE_SERVER_NOTICE_ROOM` for rejecting the invite to
    /// one's notices room (leaving once joined is allowed, as on Synapse).
    pub fn check_not_rejecting_notices(&self, user: &UserId, room_id: &ruma::RoomId) -> Result<()> {
        let system = self.server_notices_user();
        if self.rooms.membership(user, room_id)?.as_deref() == Some("invite")
            && self.rooms.is_joined(&system, room_id)?
        {
            return Err(Error::matrix(
                403,
                ErrorKind::CannotLeaveServerNoticeRoom,
                "You cannot reject this invite",
            ));
        }
        Ok(())
    }
}
