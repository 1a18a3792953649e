//! Slash commands typed into the composer, carried out by the server; and that a third person hears
//! nothing of what they do in a private room.

use super::rooms::{assert_never_heard, create, event_in, in_room, room_frame, room_gone, settle};
use super::*;

#[tokio::test]
async fn slash_commands_act_on_the_room_and_unknown_ones_post_nothing() {
    let addr = start(memory()).await;
    let mut ann = joined(addr, "Ann").await;
    let mut bob = joined(addr, "Bob").await;
    let mut cy = joined(addr, "Cy").await;
    let den = create(&mut ann, "Den", true).await;

    let (_, topic) = in_room(&den.slug, "/topic Our quiet den");
    ann.send(&topic).await;
    let changed = room_frame(&mut ann).await;
    assert_eq!(changed.topic, "Our quiet den");

    let (_, invite) = in_room(&den.slug, "/invite @Bob");
    ann.send(&invite).await;
    assert_eq!(room_frame(&mut bob).await.slug, den.slug);

    let (wave, me) = in_room(&den.slug, "/me waves hello");
    ann.send(&me).await;
    assert!(ack(&mut ann, wave).await > 0);
    let action = bob
        .next_matching(|f| match f {
            ServerFrame::Event(e) if e.id == wave => Some(e.clone()),
            _ => None,
        })
        .await;
    assert_eq!(
        (action.kind, action.text.as_str(), action.name.as_str()),
        (EventKind::Action, "waves hello", "Ann")
    );

    // Help answers the one who asked; an unknown command is refused and posted nowhere.
    let (help_id, help) = in_room(&den.slug, "/help");
    ann.send(&help).await;
    let (id, reply) = ann
        .next_matching(|f| match f {
            ServerFrame::Command { id, reply } => Some((*id, reply.clone())),
            _ => None,
        })
        .await;
    assert_eq!(id, help_id);
    for command in ["/me", "/topic", "/invite", "/leave", "/help"] {
        assert!(reply.contains(command), "{reply}");
    }
    let (shrug, unknown) = in_room(&den.slug, "/shrug whatever");
    ann.send(&unknown).await;
    let (message, refused) = ann.expect_error(ErrorCode::UnknownCommand).await;
    assert_eq!(refused, Some(shrug));
    assert!(
        message.contains("/shrug") && message.contains("/help"),
        "{message}"
    );
    let (_, blank) = in_room(&den.slug, "/me   ");
    ann.send(&blank).await;
    let (message, _) = ann.expect_error(ErrorCode::TextBlank).await;
    assert!(message.contains("/me"), "{message}");

    // Two slashes post the text with one.
    let (literal, escaped) = in_room(&den.slug, "//shrug is not a command");
    ann.send(&escaped).await;
    let posted = event_in(&mut bob, &den.slug).await;
    let posted = if posted.id == literal {
        posted
    } else {
        event_in(&mut bob, &den.slug).await
    };
    assert_eq!(
        (posted.id, posted.text.as_str()),
        (literal, "/shrug is not a command")
    );

    let (_, leave) = in_room(&den.slug, "/leave");
    bob.send(&leave).await;
    assert_eq!(room_gone(&mut bob).await, den.slug);

    // Nothing of it anywhere but in the den: not the refused command, not the private room.
    settle(&mut bob, Duration::from_millis(200)).await;
    assert_never_heard(&bob, "Bob", &["shrug whatever", "Commands:"]);
    settle(&mut cy, Duration::from_millis(200)).await;
    assert_never_heard(
        &cy,
        "Cy",
        &["Den", "quiet den", "waves", "shrug", &den.slug],
    );
}

#[tokio::test]
async fn without_javascript_me_posts_an_action_and_other_commands_post_nothing() {
    use super::accounts::{boot_of, form, post, status};
    let addr = start(memory()).await;
    let mut watcher = joined(addr, "Wat").await;
    let token = browser(addr).await;
    assert_eq!(
        status(&post(addr, "/join", Some(&token), None, "name=Formy").await),
        303
    );
    let posted = post(
        addr,
        "/messages",
        Some(&token),
        None,
        &form(&[("text", "/me nods")]),
    )
    .await;
    assert_eq!(status(&posted), 303, "{posted}");
    let action = watcher
        .next_matching(|f| match f {
            ServerFrame::Event(e) if e.name == "Formy" && e.is_message() => Some(e.clone()),
            _ => None,
        })
        .await;
    assert_eq!(
        (action.kind, action.text.as_str()),
        (EventKind::Action, "nods")
    );
    for command in ["/topic x", "/shrug", "/me"] {
        let refused = post(
            addr,
            "/messages",
            Some(&token),
            None,
            &form(&[("text", command)]),
        )
        .await;
        assert_eq!(status(&refused), 400, "{command}");
        let error = boot_of(&refused).form_error.unwrap();
        assert!(error.contains("nothing was posted"), "{command}: {error}");
    }
    settle(&mut watcher, Duration::from_millis(200)).await;
    assert_never_heard(&watcher, "Wat", &["shrug", "topic x"]);
}
