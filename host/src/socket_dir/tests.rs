use std::os::unix::fs::PermissionsExt;

use super::*;

fn set_mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn mode_of(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o7777
}

#[tokio::test]
async fn a_missing_folder_is_made_0750_and_the_socket_bound_0660() {
    let temp = tempfile::tempdir().unwrap();
    let folder = temp.path().join("run/ygg");
    let dir = SocketDir::open(&folder).unwrap();
    assert_eq!(mode_of(&folder), FOLDER_MODE);
    let (_listener, inode) = dir.bind("agent.sock".as_ref(), 0o660).unwrap();
    let socket = folder.join("agent.sock");
    assert_eq!(mode_of(&socket), 0o660);
    assert_eq!(std::fs::metadata(&socket).unwrap().ino(), inode);
    // The command line accepts it, and the process behind it (us).
    let allowed = check_client_socket(&socket).unwrap();
    let stream = tokio::net::UnixStream::connect(&socket).await.unwrap();
    check_peer(&stream, &allowed).unwrap();
    dir.remove("agent.sock".as_ref(), inode);
    assert!(!socket.exists());
}

#[tokio::test]
async fn a_folder_others_may_write_is_refused_by_the_agent_and_the_command_line() {
    let temp = tempfile::tempdir().unwrap();
    let folder = temp.path().join("shared");
    std::fs::create_dir(&folder).unwrap();
    let dir = SocketDir::open(&folder).unwrap();
    let (_listener, _) = dir.bind("agent.sock".as_ref(), 0o660).unwrap();
    for mode in [0o777, 0o770, 0o1777] {
        set_mode(&folder, mode);
        let error = SocketDir::open(&folder).err().expect("refused").to_string();
        assert!(error.contains(&format!("has mode {mode:04o}")), "{error}");
        assert!(error.contains("set agent.api.socket"), "{error}");
        let error = check_client_socket(&folder.join("agent.sock")).unwrap_err();
        assert!(error.contains("refusing to talk to"), "{error}");
        assert!(check_for_config(&folder.join("agent.sock")).is_err());
    }
    // A folder above the socket's that others may write is refused too.
    set_mode(&folder, 0o750);
    set_mode(temp.path(), 0o777);
    assert!(SocketDir::open(&folder).is_err());
    assert!(check_client_socket(&folder.join("agent.sock")).is_err());
    // (A missing folder under it too: `check` says so before the agent runs.)
    assert!(check_for_config(&temp.path().join("new/agent.sock")).is_err());
    set_mode(temp.path(), 0o700);
    assert!(check_for_config(&temp.path().join("new/agent.sock")).is_ok());
}

#[test]
fn a_stale_socket_is_replaced_and_anything_else_left_alone() {
    let temp = tempfile::tempdir().unwrap();
    let dir = SocketDir::open(temp.path()).unwrap();
    let stale = std::os::unix::net::UnixListener::bind(temp.path().join("agent.sock")).unwrap();
    drop(stale);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = runtime.enter();
    dir.bind("agent.sock".as_ref(), 0o660).unwrap();
    std::fs::write(temp.path().join("data"), "keep").unwrap();
    let error = dir.bind("data".as_ref(), 0o660).err().unwrap();
    assert!(error.to_string().contains("is not a socket"), "{error}");
    assert_eq!(
        std::fs::read_to_string(temp.path().join("data")).unwrap(),
        "keep"
    );
}

#[tokio::test]
async fn a_folder_swapped_after_open_changes_nothing() {
    let temp = tempfile::tempdir().unwrap();
    let folder = temp.path().join("ygg");
    let dir = SocketDir::open(&folder).unwrap();
    // Someone moves the folder away and puts another in its place.
    let moved = temp.path().join("moved");
    std::fs::rename(&folder, &moved).unwrap();
    std::fs::create_dir(&folder).unwrap();
    let (_listener, inode) = dir.bind("agent.sock".as_ref(), 0o660).unwrap();
    assert!(
        moved.join("agent.sock").exists(),
        "bound where it was opened"
    );
    assert!(!folder.join("agent.sock").exists(), "not in the new folder");
    // Removal follows the descriptor too.
    std::os::unix::net::UnixListener::bind(folder.join("agent.sock")).unwrap();
    dir.remove("agent.sock".as_ref(), inode);
    assert!(!moved.join("agent.sock").exists());
    assert!(
        folder.join("agent.sock").exists(),
        "the other one is not ours"
    );
}
