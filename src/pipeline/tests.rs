//! The pipeline contract, one test per rule that could break.

use std::sync::{Arc, Mutex};

use http_body_util::BodyExt;

use super::*;
use crate::config::{Problems, RespondSpec};
use crate::http::Body;
use crate::targets::respond::Respond;

/// What a probe does in its request phase.
#[derive(Clone, Copy)]
pub(crate) enum Action {
    Continue,
    Respond,
    Fail,
}

/// A policy that records its calls and answers as told.
pub struct Probe {
    name: &'static str,
    action: Action,
    log: Arc<Mutex<Vec<String>>>,
}

impl Probe {
    pub(crate) fn on_request(&self) -> Result<Flow, GatewayError> {
        self.log.lock().unwrap().push(format!("req:{}", self.name));
        match self.action {
            Action::Continue => Ok(Flow::Continue),
            Action::Respond => Ok(Flow::Respond(http::Response::new(Body::full(
                "from policy",
            )))),
            Action::Fail => Err(GatewayError::Unauthorized {
                reason: "no credentials",
                challenge: None,
            }),
        }
    }

    pub(crate) fn on_response(&self, resp: &mut Response) {
        self.log.lock().unwrap().push(format!("resp:{}", self.name));
        resp.headers_mut()
            .append("x-seen-by", self.name.parse().unwrap());
    }
}

fn target(log: &Arc<Mutex<Vec<String>>>) -> Arc<Target> {
    let spec: RespondSpec = serde_saphyr::from_str("status: 200\nbody: from target\n").unwrap();
    log.lock().unwrap().clear();
    let mut p = Problems::default();
    Arc::new(Target::Respond(
        Respond::build("t", &spec, &[], &mut p).unwrap(),
    ))
}

async fn run(actions: &[(&'static str, Action)]) -> (Vec<String>, Response) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let policies = actions
        .iter()
        .map(|(name, action)| {
            Policy::Probe(Probe {
                name,
                action: *action,
                log: log.clone(),
            })
        })
        .collect();
    let pipeline = Pipeline::new(policies, target(&log));
    let mut ctx = RequestCtx::for_test();
    let resp = pipeline
        .run(&mut ctx, http::Request::new(Body::Empty))
        .await;
    let calls = log.lock().unwrap().clone();
    (calls, resp)
}

fn seen_by(resp: &Response) -> Vec<&str> {
    resp.headers()
        .get_all("x-seen-by")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect()
}

#[tokio::test]
async fn requests_run_in_order_and_responses_in_reverse() {
    let (calls, resp) = run(&[
        ("a", Action::Continue),
        ("b", Action::Continue),
        ("c", Action::Continue),
    ])
    .await;
    assert_eq!(
        calls,
        ["req:a", "req:b", "req:c", "resp:c", "resp:b", "resp:a"]
    );
    assert_eq!(seen_by(&resp), ["c", "b", "a"]);
    assert_eq!(
        &resp.into_body().collect().await.unwrap().to_bytes()[..],
        b"from target"
    );
}

#[tokio::test]
async fn an_early_answer_skips_later_policies_and_the_target() {
    let (calls, resp) = run(&[
        ("a", Action::Continue),
        ("b", Action::Respond),
        ("c", Action::Continue),
    ])
    .await;
    assert_eq!(calls, ["req:a", "req:b", "resp:b", "resp:a"]);
    assert_eq!(
        &resp.into_body().collect().await.unwrap().to_bytes()[..],
        b"from policy"
    );
}

#[tokio::test]
async fn an_error_is_rendered_once_and_still_walks_back() {
    let (calls, resp) = run(&[
        ("a", Action::Continue),
        ("b", Action::Fail),
        ("c", Action::Continue),
    ])
    .await;
    assert_eq!(calls, ["req:a", "req:b", "resp:b", "resp:a"]);
    assert_eq!(resp.status(), 401);
    assert_eq!(seen_by(&resp), ["b", "a"]);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"]["code"], "unauthorized");
    assert_eq!(v["error"]["request_id"], "test-id");
}

#[tokio::test]
async fn the_error_code_is_recorded_for_logs_and_metrics() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let pipeline = Pipeline::new(
        vec![Policy::Probe(Probe {
            name: "a",
            action: Action::Fail,
            log: log.clone(),
        })],
        target(&log),
    );
    let mut ctx = RequestCtx::for_test();
    let _ = pipeline
        .run(&mut ctx, http::Request::new(Body::Empty))
        .await;
    assert_eq!(ctx.error, Some("unauthorized"));
}
