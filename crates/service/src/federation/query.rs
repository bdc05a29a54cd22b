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

    /// Another server's room directory, for a client that names it
    /// (`/publicRooms?server=`): one page, searched as the client asked.
    pub async fn remote_public_rooms(
        &self,
        server: &ruma::ServerName,
        limit: Option<ruma::UInt>,
        since: Option<String>,
        filter: ruma::directory::Filter,
        room_network: ruma::directory::RoomNetwork,
    ) -> Result<ruma::api::federation::directory::get_public_rooms_filtered::v1::Response> {
        use ruma::api::federation::directory::get_public_rooms_filtered::v1::Request;
        let mut request = Request::new();
        (request.limit, request.since, request.filter, request.room_network) =
            (limit, since, filter, room_network);
        let answer =
            tokio::time::timeout(std::time::Duration::from_secs(30), self.client.send(server, request));
        match answer.await {
            Ok(answer) => answer.map_err(|e| {
                tracing::warn!(%server, "room directory query failed: {e}");
                e.into()
            }),
            Err(_) => Err(Error::matrix(
                502,
                estuary_core::error::ErrorKind::Unknown,
                format!("{server} did not answer in time"),
            )),
        }
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
