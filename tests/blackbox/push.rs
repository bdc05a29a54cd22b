//! Push rules, notification counts and `/notifications`.

use serde_json::{Value, json};

use crate::{
    harness::{TestServer, User, assert_error},
    rooms::{create_room, send_text},
};

async fn counts(server: &TestServer, user: &User, room: &str) -> (u64, u64) {
    let (_, body) = server.get("/_matrix/client/v3/sync", Some(&user.token)).await;
    let unread = &body["rooms"]["join"][room]["unread_notifications"];
    (unread["notification_count"].as_u64().unwrap(), unread["highlight_count"].as_u64().unwrap())
}

#[tokio::test]
async fn push_rule_management() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let (status, all) = server.get("/_matrix/client/v3/pushrules/", Some(&alice.token)).await;
    assert_eq!(status, 200, "{all}");
    let overrides: Vec<&str> = all["global"]["override"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["rule_id"].as_str().unwrap())
        .collect();
    assert!(
        overrides.contains(&".m.rule.master") && overrides.contains(&".m.rule.is_user_mention"),
        "{overrides:?}"
    );
    let (_, sync) = server.get("/_matrix/client/v3/sync", Some(&alice.token)).await;
    assert!(sync["account_data"]["events"].as_array().unwrap().iter().any(|e| e["type"] == "m.push_rules"));

    let base = "/_matrix/client/v3/pushrules/global";
    let rule = json!({"pattern": "cake", "actions": ["notify"]});
    assert_eq!(server.put(&format!("{base}/content/cake"), Some(&alice.token), rule).await.0, 200);
    let rule = json!({"pattern": "pie", "actions": ["notify"]});
    assert_eq!(server.put(&format!("{base}/content/pie?before=cake"), Some(&alice.token), rule).await.0, 200);
    let (_, content) = server.get(&format!("{base}/content/"), Some(&alice.token)).await;
    let ids: Vec<&str> = content
        .as_array()
        .map(|a| a.iter().map(|r| r["rule_id"].as_str().unwrap()).collect())
        .unwrap_or_default();
    let (_, global) = server.get(&format!("{base}/"), Some(&alice.token)).await;
    let order: Vec<&str> =
        global["content"].as_array().unwrap().iter().map(|r| r["rule_id"].as_str().unwrap()).collect();
    assert!(
        order.iter().position(|r| *r == "pie") < order.iter().position(|r| *r == "cake"),
        "{order:?} {ids:?}"
    );
    let (_, cake) = server.get(&format!("{base}/content/cake"), Some(&alice.token)).await;
    assert_eq!(cake["pattern"], "cake");

    assert_eq!(
        server
            .put(&format!("{base}/content/cake/enabled"), Some(&alice.token), json!({"enabled": false}))
            .await
            .0,
        200
    );
    let (_, enabled) = server.get(&format!("{base}/content/cake/enabled"), Some(&alice.token)).await;
    assert_eq!(enabled["enabled"], false);
    let actions = json!({"actions": ["notify", {"set_tweak": "highlight"}]});
    assert_eq!(server.put(&format!("{base}/content/cake/actions"), Some(&alice.token), actions).await.0, 200);
    let (_, actions) = server.get(&format!("{base}/content/cake/actions"), Some(&alice.token)).await;
    assert_eq!(actions["actions"][1]["set_tweak"], "highlight");
    assert_eq!(server.delete(&format!("{base}/content/cake"), Some(&alice.token)).await.0, 200);
    assert_error(&server.get(&format!("{base}/content/cake"), Some(&alice.token)).await, 404, "M_NOT_FOUND");
    assert_error(
        &server.delete(&format!("{base}/override/.m.rule.master"), Some(&alice.token)).await,
        400,
        "M_INVALID_PARAM",
    );
    let bad = server
        .put(
            &format!("{base}/content/tart?before=nonexistent"),
            Some(&alice.token),
            json!({"pattern": "t", "actions": []}),
        )
        .await;
    assert_error(&bad, 404, "M_NOT_FOUND");
    // Disabling the master rule is allowed and reflected.
    assert_eq!(
        server
            .put(
                &format!("{base}/override/.m.rule.master/enabled"),
                Some(&alice.token),
                json!({"enabled": true})
            )
            .await
            .0,
        200
    );
    let (_, master) = server.get(&format!("{base}/override/.m.rule.master"), Some(&alice.token)).await;
    assert_eq!(master["enabled"], true);
}

#[tokio::test]
async fn notification_counts_for_dms_mentions_and_receipts() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let dm = create_room(
        &server,
        &alice,
        json!({"preset": "trusted_private_chat", "invite": ["@bob:localhost"], "is_direct": true}),
    )
    .await;
    server.post(&format!("/_matrix/client/v3/rooms/{dm}/join"), Some(&bob.token), json!({})).await;
    send_text(&server, &alice, &dm, "1", "hello bob").await;
    // Counted once here; later messages add to what the server keeps.
    assert_eq!(counts(&server, &bob, &dm).await, (1, 0));
    send_text(&server, &alice, &dm, "2", "are you there").await;
    assert_eq!(counts(&server, &bob, &dm).await, (2, 0), "one-to-one messages notify");
    assert_eq!(counts(&server, &alice, &dm).await, (0, 0), "own messages do not");

    let group = create_room(&server, &alice, json!({"preset": "public_chat"})).await;
    for user in [&bob, &carol] {
        server.post(&format!("/_matrix/client/v3/rooms/{group}/join"), Some(&user.token), json!({})).await;
    }
    send_text(&server, &alice, &group, "g1", "general chatter").await;
    assert_eq!(counts(&server, &bob, &group).await, (1, 0));
    let mention =
        json!({"msgtype": "m.text", "body": "bob: look", "m.mentions": {"user_ids": ["@bob:localhost"]}});
    let (_, mentioned) = server
        .put(&format!("/_matrix/client/v3/rooms/{group}/send/m.room.message/g2"), Some(&alice.token), mention)
        .await;
    assert_eq!(counts(&server, &bob, &group).await, (2, 1), "the mention highlights");
    assert_eq!(counts(&server, &carol, &group).await, (2, 0));

    let (_, notifications) = server.get("/_matrix/client/v3/notifications", Some(&bob.token)).await;
    let list = notifications["notifications"].as_array().unwrap();
    // Two DMs, two group messages, and the DM's invite (`.m.rule.invite_for_me`).
    assert_eq!(list.len(), 5, "{notifications}");
    assert_eq!(list[4]["event"]["content"]["membership"], "invite");
    assert_eq!(list[0]["event"]["event_id"], mentioned["event_id"], "newest first");
    assert_eq!(list[0]["read"], false);
    let (_, highlights) =
        server.get("/_matrix/client/v3/notifications?only=highlight", Some(&bob.token)).await;
    assert_eq!(highlights["notifications"].as_array().unwrap().len(), 1);
    let (_, page) = server.get("/_matrix/client/v3/notifications?limit=3", Some(&bob.token)).await;
    let next = page["next_token"].as_str().unwrap();
    let (_, rest) =
        server.get(&format!("/_matrix/client/v3/notifications?from={next}"), Some(&bob.token)).await;
    assert_eq!(rest["notifications"].as_array().unwrap().len(), 2);

    // Reading up to the newest event clears the counts.
    let receipt = format!(
        "/_matrix/client/v3/rooms/{group}/receipt/m.read/{}",
        mentioned["event_id"].as_str().unwrap()
    );
    server.post(&receipt, Some(&bob.token), json!({})).await;
    assert_eq!(counts(&server, &bob, &group).await, (0, 0));
    send_text(&server, &alice, &group, "g3", "one more").await;
    assert_eq!(counts(&server, &bob, &group).await, (1, 0));
    let _: Value = json!({});
}

/// Every rule kind can be added, listed per kind (`…/{kind}/`), placed with
/// `before`/`after`, disabled and deleted; malformed paths are 400.
#[tokio::test]
async fn push_rule_kinds_and_malformed_paths() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let token = Some(alice.token.as_str());
    let base = "/_matrix/client/v3/pushrules/global";
    let room = create_room(&server, &alice, json!({})).await;
    let notice = json!([{"kind": "event_match", "key": "content.msgtype", "pattern": "m.notice"}]);
    let rules = [
        ("room", room.clone(), json!({"actions": ["notify"]})),
        ("sender", "@bob:example.com".to_owned(), json!({"actions": ["notify"]})),
        ("content", "тест".to_owned(), json!({"actions": ["notify"], "pattern": "тест"})),
        ("override", "my_override".to_owned(), json!({"actions": ["notify"], "conditions": notice})),
        ("underride", "my_underride".to_owned(), json!({"actions": ["notify"], "conditions": notice})),
    ];
    for (kind, rule_id, body) in &rules {
        let path = format!("{base}/{kind}/{}", crate::harness::encode(rule_id));
        assert_eq!(server.put(&path, token, body.clone()).await.0, 200, "{kind}");
        let (status, listed) = server.get(&format!("{base}/{kind}/"), token).await;
        assert_eq!(status, 200, "{listed}");
        let rule = listed.as_array().unwrap().iter().find(|r| r["rule_id"] == rule_id.as_str()).cloned();
        let rule = rule.unwrap_or_else(|| panic!("{kind} rule not listed: {listed}"));
        assert_eq!((rule["enabled"].clone(), rule["default"].clone()), (json!(true), json!(false)));
    }
    let (_, senders) = server.get(&format!("{base}/sender/"), token).await;
    assert_eq!(senders.as_array().unwrap().len(), 1);

    // Order: new rules go first; `before`/`after` place them.
    let order = |listed: Value| -> Vec<String> {
        listed.as_array().unwrap().iter().map(|r| r["rule_id"].as_str().unwrap().to_owned()).collect()
    };
    let rule = json!({"actions": ["notify"]});
    server.put(&format!("{base}/sender/@a:example.com"), token, rule.clone()).await;
    server.put(&format!("{base}/sender/@b:example.com?after=@a:example.com"), token, rule.clone()).await;
    server.put(&format!("{base}/sender/@c:example.com?before=@a:example.com"), token, rule).await;
    let (_, listed) = server.get(&format!("{base}/sender/"), token).await;
    assert_eq!(order(listed)[..3], ["@c:example.com", "@a:example.com", "@b:example.com"]);

    let path = format!("{base}/sender/@a:example.com");
    server.put(&format!("{path}/enabled"), token, json!({"enabled": false})).await;
    assert_eq!(server.get(&path, token).await.1["enabled"], false);
    assert_eq!(server.delete(&path, token).await.0, 200);
    assert_error(&server.get(&path, token).await, 404, "M_NOT_FOUND");

    for path in [
        "/global",
        "/global/room",
        "/not_a_scope/",
        "/global/not_a_template/",
        "/global/override/.m.rule.master/not_an_attr",
    ] {
        let response = server.get(&format!("/_matrix/client/v3/pushrules{path}"), token).await;
        assert_eq!(response.0, 400, "GET {path}: {}", response.1);
    }
    for path in [
        "/",
        "/not_a_scope/room/x",
        "/global",
        "/global/room",
        "/global/room/",
        "/global/override/.m.rule.master/not_an_attr",
    ] {
        let response = server.put(&format!("/_matrix/client/v3/pushrules{path}"), token, json!({})).await;
        assert_eq!(response.0, 400, "PUT {path}: {}", response.1);
    }
    assert_eq!(server.get("/_matrix/client/v3/pushrules", token).await.0, 404);
}
