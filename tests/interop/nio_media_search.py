"""Interop: matrix-nio uploads an image, sets it as avatar, downloads it and
a thumbnail, and searches for a message.

Usage: nio_media_search.py <homeserver base URL> <scratch dir>
Prints "interop ok" and exits 0 on success.
"""

import asyncio
import io
import json
import struct
import sys
import zlib

from nio import (
    AsyncClient,
    DownloadResponse,
    LoginResponse,
    ProfileGetAvatarResponse,
    RegisterResponse,
    RoomCreateResponse,
    RoomSendResponse,
    ThumbnailResponse,
    UploadResponse,
)

PASSWORD = "interop password 3"


def png(width, height):
    """A small RGB PNG, written by hand (no imaging library needed)."""
    raw = b""
    for y in range(height):
        raw += b"\x00" + b"".join(bytes((x * 4 % 256, y * 5 % 256, 90)) for x in range(width))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def png_size(data):
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", data[16:24])


async def main(base, scratch):
    client = AsyncClient(base, "nioalice")
    try:
        registered = await client.register("nioalice", PASSWORD)
        assert isinstance(registered, RegisterResponse), registered
        logged_in = await client.login(PASSWORD)
        assert isinstance(logged_in, LoginResponse), logged_in

        image = png(400, 300)
        uploaded, _ = await client.upload(io.BytesIO(image), content_type="image/png", filename="avatar.png", filesize=len(image))
        assert isinstance(uploaded, UploadResponse), uploaded
        mxc = uploaded.content_uri
        assert mxc.startswith("mxc://"), mxc

        set_avatar = await client.set_avatar(mxc)
        assert not hasattr(set_avatar, "status_code"), set_avatar
        avatar = await client.get_avatar()
        assert isinstance(avatar, ProfileGetAvatarResponse) and avatar.avatar_url == mxc, avatar

        downloaded = await client.download(mxc=mxc)
        assert isinstance(downloaded, DownloadResponse), downloaded
        assert downloaded.body == image, "download is not byte-identical"
        assert downloaded.content_type == "image/png", downloaded.content_type

        server_name, media_id = mxc[len("mxc://"):].split("/", 1)
        thumb = await client.thumbnail(server_name, media_id, 96, 96)
        assert isinstance(thumb, ThumbnailResponse), thumb
        width, height = png_size(thumb.body)
        # A 96x96 "scale" request is served from the 320x240 size (the spec
        # allows larger thumbnails), keeping the 4:3 aspect ratio.
        assert (width, height) == (320, 240), f"thumbnail is {width}x{height}"

        created = await client.room_create(name="search room")
        assert isinstance(created, RoomCreateResponse), created
        for body in ["the quick brown fox", "a lazy dog sleeps", "foxes are quick"]:
            sent = await client.room_send(created.room_id, "m.room.message", {"msgtype": "m.text", "body": body})
            assert isinstance(sent, RoomSendResponse), sent
        query = {"search_categories": {"room_events": {"search_term": "fox", "order_by": "recent"}}}
        response = await client.send(
            "POST",
            "/_matrix/client/v3/search",
            json.dumps(query),
            headers={"Authorization": f"Bearer {client.access_token}", "Content-Type": "application/json"},
        )
        assert response.status == 200, await response.text()
        found = await response.json()
        bodies = [r["result"]["content"]["body"] for r in found["search_categories"]["room_events"]["results"]]
        assert bodies == ["foxes are quick", "the quick brown fox"], bodies
        print("interop ok: upload, avatar, download, thumbnail and search")
    finally:
        await client.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
