//! Queries other servers answer about their own users and aliases
//! (`/query/profile`, `/query/directory`), both ways.

use estuary_core::{Error, Result};
use ruma::{
    OwnedRoomId, OwnedServerName, RoomAliasId, UserId,
    api::federation::query::{get_profile_information, get_room_information},
    profile::ProfileFieldName,
};

use super::Federation;

impl Federation {
    /// A remote user's profile (one field, or all), from their server.
    pub async fn remote_profile(
        &self,
        user_id: &UserId,
        field: Option<ProfileFieldName>,
    ) -> Result<ruma::api::federation::query::get_profile_information::v1::Response> {
        let mut request = get_profile_information::v1::Request::new(user_id.to_owned());
        request.field = field;
        self.client.send(user_id.server_name(), request).await.map_err(|e| match e {
            e if e.is_permanent() => Error::not_found("Profile not found"),
            e => e.into(),
        })
    }

    /// The room an alias of another server names, and servers to join it through.
    pub async fn remote_alias(&self, alias: &RoomAliasId) -> Result<(OwnedRoomId, Vec<OwnedServerName>)> {
        let request = get_room_information::v1::Request::new(alias.to_owned());
        let answer = self.client.send(alias.server_name(), request).await.map_err(|e| match e {
            e if e.is_permanent() => Error::not_found("Room alias not found"),
            e => e.into(),
        })?;
        Ok((answer.room_id, answer.servers))
    }

    /// Our answer to `/query/directory`: the room and the servers in it.
    pub fn local_alias(&self, alias: &RoomAliasId) -> Result<(OwnedRoomId, Vec<OwnedServerName>)> {
        if alias.server_name() != self.config.server_name {
            return Err(Error::not_found("The alias is not on this server"));
        }
        let room_id =
            self.rooms.resolve_alias(alias)?.ok_or_else(|| Error::not_found("Room alias not found"))?;
        let mut servers = vec![self.config.server_name.clone()];
        servers.extend(self.rooms.joined_servers(&room_id)?);
        Ok((room_id, servers))
    }
}
