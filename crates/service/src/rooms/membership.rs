//! Membership changes and the membership index.

use estuary_core::{Error, Result};
use estuary_events::PduTemplate;
use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId, api::client::profile::ProfileFieldName};
use serde_json::{Value as JsonValue, json};

use super::Rooms;
use crate::storage_error::StorageResultExt;

impl Rooms {
    /// The user's membership in a room (`join`, `invite`, `leave`, `ban`, `knock`).
    pub fn membership(&self, user_id: &UserId, room_id: &RoomId) -> Result<Option<String>> {
        self.useridroomid_membership.get(&(user_id.to_string(), room_id.to_string())).db()
    }

    pub fn is_joined(&self, user_id: &UserId, room_id: &RoomId) -> Result<bool> {
        Ok(self.membership(user_id, room_id)?.as_deref() == Some("join"))
    }

    /// Rooms where the user has `membership`.
    pub fn rooms_with_membership(&self, user_id: &UserId, membership: &str) -> Result<Vec<OwnedRoomId>> {
        Ok(self
            .memberships(user_id)?
            .into_iter()
            .filter(|(_, m)| m == membership)
            .map(|(room, _)| room)
            .collect())
    }

    /// Every room the user has a membership in, with that membership.
    pub fn memberships(&self, user_id: &UserId) -> Result<Vec<(OwnedRoomId, String)>> {
        Ok(self
            .useridroomid_membership
            .scan_prefix(&(user_id.to_string(),))
            .db()?
            .into_iter()
            .filter_map(|((_, room), m)| Some((RoomId::parse(room).ok()?, m)))
            .collect())
    }

    /// Users of a room with `membership`.
    pub fn members_with_membership(&self, room_id: &RoomId, membership: &str) -> Result<Vec<OwnedUserId>> {
        Ok(self
            .roomiduserid_membership
            .scan_prefix(&(room_id.to_string(),))
            .db()?
            .into_iter()
            .filter(|(_, m)| m == membership)
            .filter_map(|((_, user), _)| UserId::parse(user).ok())
            .collect())
    }

    /// The room's joined, invited and departed members, from one read of
    /// its membership index (every sync's room summary needs them).
    pub fn joined_invited_and_left(&self, room_id: &RoomId) -> Result<[Vec<OwnedUserId>; 3]> {
        let [mut joined, mut invited, mut left] = [Vec::new(), Vec::new(), Vec::new()];
        for ((_, user), membership) in
            self.roomiduserid_membership.scan_prefix(&(room_id.to_string(),)).db()?
        {
            let list = match membership.as_str() {
                "join" => &mut joined,
                "invite" => &mut invited,
                "leave" => &mut left,
                _ => continue,
            };
            list.extend(UserId::parse(user).ok());
        }
        Ok([joined, invited, left])
    }

    /// A user's member event content in one of the rooms they are joined to
    /// (their display name and avatar as other servers' users are known).
    pub fn joined_member_content(&self, user_id: &UserId) -> Result<Option<JsonValue>> {
        let Some(room_id) = self.rooms_with_membership(user_id, "join")?.into_iter().next() else {
            return Ok(None);
        };
        let Some(room) = self.room(&room_id)? else { return Ok(None) };
        let state = self.current_state(&room)?;
        let member = ruma::events::StateEventType::RoomMember;
        Ok(self.state_pdu(&state, &member, user_id.as_str())?.map(|pdu| pdu.content_value()))
    }

    /// The user and everyone who shares a joined room with them, sorted.
    pub fn room_mates(&self, user_id: &UserId) -> Result<Vec<OwnedUserId>> {
        let mut users = vec![user_id.to_owned()];
        for room in self.rooms_with_membership(user_id, "join")? {
            users.extend(self.members_with_membership(&room, "join")?);
        }
        users.sort();
        users.dedup();
        Ok(users)
    }

    /// A join event's content: the user's current display name and avatar.
    pub fn join_template(&self, user_id: &UserId, reason: Option<String>) -> Result<PduTemplate> {
        self.join_template_with(user_id, reason, serde_json::Map::new())
    }

    /// A join with the client's own fields in its content (`POST /join`
    /// with a body): the profile fills in only what the client left out.
    fn join_template_with(
        &self,
        user_id: &UserId,
        reason: Option<String>,
        custom: serde_json::Map<String, JsonValue>,
    ) -> Result<PduTemplate> {
        let mut content = JsonValue::Object(custom);
        content["membership"] = "join".into();
        self.add_profile(&mut content, user_id)?;
        if let Some(reason) = reason {
            content["reason"] = reason.into();
        }
        Ok(PduTemplate::state("m.room.member", user_id.as_str(), content))
    }

    fn add_profile(&self, content: &mut JsonValue, user_id: &UserId) -> Result<()> {
        for (field, key) in
            [(ProfileFieldName::DisplayName, "displayname"), (ProfileFieldName::AvatarUrl, "avatar_url")]
        {
            if content.get(key).is_none()
                && let Ok(value) = self.profiles.get_field(user_id, &field)
            {
                content[key] = value.value().into_owned();
            }
        }
        Ok(())
    }

    /// Whether the room's `m.room.guest_access` is `can_join`.
    pub fn guests_can_join(&self, room_id: &RoomId) -> Result<bool> {
        let room = self.require_room(room_id)?;
        let state = self.state.load(room.state)?;
        let access = self.state_pdu(&state, &ruma::events::StateEventType::RoomGuestAccess, "")?;
        Ok(access.is_some_and(|a| a.content_value()["guest_access"] == "can_join"))
    }

    pub async fn join(
        &self,
        room_id: &RoomId,
        user_id: &UserId,
        reason: Option<String>,
        custom: serde_json::Map<String, JsonValue>,
    ) -> Result<()> {
        if self.room(room_id)?.is_none() {
            return Err(Error::not_found("Unknown room (joining rooms on other servers needs federation)"));
        }
        if self.is_joined(user_id, room_id)? {
            return Ok(());
        }
        let mut template = self.join_template_with(user_id, reason, custom)?;
        if let Some(authoriser) = self.restricted_join_authoriser(room_id, user_id)? {
            template.content["join_authorised_via_users_server"] = authoriser.to_string().into();
        }
        self.send(room_id, user_id, template, None).await?;
        Ok(())
    }

    /// For a restricted room (v8+) that the user (ours or another server's)
    /// may join through membership of an allowed room this server is in: a
    /// local member who may invite, to vouch for the join.
    pub fn restricted_join_authoriser(
        &self,
        room_id: &RoomId,
        user_id: &UserId,
    ) -> Result<Option<OwnedUserId>> {
        let room = self.require_room(room_id)?;
        let state = self.state.load(room.state)?;
        let Some(rules) = self.state_pdu(&state, &ruma::events::StateEventType::RoomJoinRules, "")? else {
            return Ok(None);
        };
        let rules = rules.content_value();
        let restricted = matches!(rules["join_rule"].as_str(), Some("restricted" | "knock_restricted"));
        if !restricted || matches!(self.membership(user_id, room_id)?.as_deref(), Some("invite")) {
            return Ok(None);
        }
        let allowed = rules["allow"].as_array().into_iter().flatten().any(|rule| {
            rule["type"] == "m.room_membership"
                && rule["room_id"]
                    .as_str()
                    .and_then(|r| RoomId::parse(r).ok())
                    .is_some_and(|r| self.is_joined(user_id, &r).unwrap_or(false))
        });
        if !allowed {
            return Ok(None);
        }
        let power = self.power_levels(&state, &room.room_version)?;
        Ok(self
            .members_with_membership(room_id, "join")?
            .into_iter()
            .find(|member| member.server_name() == self.config.server_name && power.user_can_invite(member)))
    }

    /// Ask to join (room versions 7+ with a `knock` join rule).
    pub async fn knock(&self, room_id: &RoomId, user_id: &UserId, reason: Option<String>) -> Result<()> {
        if matches!(self.membership(user_id, room_id)?.as_deref(), Some("join")) {
            return Err(Error::forbidden("You are already in the room"));
        }
        self.set_membership(room_id, user_id, user_id, "knock", reason).await
    }

    /// After a profile change, refresh the user's member event in every joined room.
    pub async fn propagate_profile(&self, user_id: &UserId) -> Result<()> {
        for room_id in self.rooms_with_membership(user_id, "join")? {
            let template = self.join_template(user_id, None)?;
            if let Err(err) = self.send(&room_id, user_id, template, None).await {
                tracing::debug!(%room_id, %user_id, "profile not propagated: {err}");
            }
        }
        Ok(())
    }

    pub async fn invite(
        &self,
        room_id: &RoomId,
        sender: &UserId,
        invitee: &UserId,
        reason: Option<String>,
        is_direct: bool,
    ) -> Result<()> {
        self.require_room(room_id)?;
        self.require_not_joined(invitee, room_id)?;
        self.send(room_id, sender, self.invite_template(invitee, reason, is_direct)?, None).await?;
        Ok(())
    }

    /// An invite for someone already in the room is refused.
    pub fn require_not_joined(&self, invitee: &UserId, room_id: &RoomId) -> Result<()> {
        if self.is_joined(invitee, room_id)? {
            return Err(Error::forbidden("The user is already in the room"));
        }
        Ok(())
    }

    /// An invite's member event: the invitee's profile, and `is_direct`.
    pub fn invite_template(
        &self,
        invitee: &UserId,
        reason: Option<String>,
        is_direct: bool,
    ) -> Result<PduTemplate> {
        let mut content = json!({"membership": "invite"});
        self.add_profile(&mut content, invitee)?;
        if is_direct {
            content["is_direct"] = true.into();
        }
        if let Some(reason) = reason {
            content["reason"] = reason.into();
        }
        Ok(PduTemplate::state("m.room.member", invitee.as_str(), content))
    }

    /// Leave, reject an invite, or (for another user) kick / unban.
    pub async fn set_membership(
        &self,
        room_id: &RoomId,
        sender: &UserId,
        target: &UserId,
        membership: &str,
        reason: Option<String>,
    ) -> Result<()> {
        self.require_room(room_id)?;
        let mut content = json!({"membership": membership});
        if let Some(reason) = reason {
            content["reason"] = reason.into();
        }
        self.send(room_id, sender, PduTemplate::state("m.room.member", target.as_str(), content), None)
            .await?;
        Ok(())
    }

    pub async fn leave(&self, room_id: &RoomId, user_id: &UserId, reason: Option<String>) -> Result<()> {
        match self.membership(user_id, room_id)?.as_deref() {
            Some("join" | "invite" | "knock") => {
                self.set_membership(room_id, user_id, user_id, "leave", reason).await
            }
            Some("leave") => Ok(()),
            _ => Err(Error::forbidden("You are not in this room")),
        }
    }

    pub async fn kick(
        &self,
        room_id: &RoomId,
        sender: &UserId,
        target: &UserId,
        reason: Option<String>,
    ) -> Result<()> {
        match self.membership(target, room_id)?.as_deref() {
            Some("join" | "invite" | "knock") => {
                self.set_membership(room_id, sender, target, "leave", reason).await
            }
            _ => Err(Error::forbidden("The user is not in the room")),
        }
    }

    pub async fn unban(
        &self,
        room_id: &RoomId,
        sender: &UserId,
        target: &UserId,
        reason: Option<String>,
    ) -> Result<()> {
        match self.membership(target, room_id)?.as_deref() {
            Some("ban") => self.set_membership(room_id, sender, target, "leave", reason).await,
            _ => Err(Error::forbidden("The user is not banned")),
        }
    }

    /// Hide a room the user has left from their lists.
    pub fn forget(&self, room_id: &RoomId, user_id: &UserId) -> Result<()> {
        match self.membership(user_id, room_id)?.as_deref() {
            Some("join") => {
                Err(Error::matrix(400, estuary_core::error::ErrorKind::Unknown, "You are still in the room"))
            }
            None => Err(Error::not_found("You were never in this room")),
            _ => self
                .useridroomid_forgotten
                .put(&(user_id.to_string(), room_id.to_string()), &String::new())
                .db(),
        }
    }

    pub fn is_forgotten(&self, user_id: &UserId, room_id: &RoomId) -> Result<bool> {
        self.useridroomid_forgotten.contains(&(user_id.to_string(), room_id.to_string())).db()
    }
}
