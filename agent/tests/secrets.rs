//! Secrets and config values never reach an error, a log line or `state inspect` (issue 8).

mod support;

use support::Project;

const PASSWORD: &str = "s3cr3t-in-url";

/// Regression: `state inspect` printed a base URL with its `user:password@`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_in_the_base_url_are_never_shown() {
    let project = Project::new(5).await;
    let path = project.root().join("agent.yaml");
    let config = std::fs::read_to_string(&path).unwrap();
    let url = project.emulator.base_url();
    let with_credentials = url.replace("http://", &format!("http://agent:{PASSWORD}@"));
    std::fs::write(&path, config.replace(&url, &with_credentials)).unwrap();
    let mut shown = String::new();
    for args in [
        &["resync", "--config", "agent.yaml", "--json"][..],
        &["state", "inspect", "--config", "agent.yaml"],
        &["state", "inspect", "--config", "agent.yaml", "--json"],
        &["port", "check", "--config", "agent.yaml"],
        &["state", "verify", "--config", "agent.yaml"],
    ] {
        let out = project.agent(args).await;
        shown.push_str(&String::from_utf8_lossy(&out.stdout));
        shown.push_str(&String::from_utf8_lossy(&out.stderr));
    }
    assert!(shown.contains("127.0.0.1"), "the commands ran: {shown}");
    assert!(!shown.contains(PASSWORD), "{shown}");

    // Port unreachable: the transport error names the call, not the URL.
    std::fs::write(
        &path,
        config.replace(&url, &format!("http://agent:{PASSWORD}@127.0.0.1:9")),
    )
    .unwrap();
    let out = project
        .agent(&["port", "check", "--config", "agent.yaml"])
        .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains(PASSWORD), "{stderr}");
}

/// Regression: a mapping path pointing at a file that is not a mapping printed the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_that_is_not_a_mapping_is_never_printed() {
    let project = Project::new(1).await;
    std::fs::write(
        project.root().join("port-app-config.yaml"),
        "root:x:0:0:the-file-content-line\n",
    )
    .unwrap();
    for args in [
        &["config", "validate", "--config", "agent.yaml"][..],
        &["resync", "--config", "agent.yaml"],
        &["mapping", "validate", "--mapping", "port-app-config.yaml"],
    ] {
        let out = project.agent(args).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains("port-app-config.yaml"), "{stderr}");
        assert!(
            !stderr.contains("the-file-content-line"),
            "{args:?}: {stderr}"
        );
    }
}
