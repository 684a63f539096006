//! The generated CRDs' CEL rules, evaluated client-side (kube-cel) on the checked-in YAML, the
//! way the API server evaluates them on `kubectl apply`: the examples pass, and each class of
//! bad object is refused with its rule's message.

use std::path::Path;

use kube::core::cel::{ErrorKind, Validator, compile_schema};
use serde_json::{Value, json};

fn crd_schema(file: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../charts/offpeak/crds")
        .join(file);
    let text = std::fs::read_to_string(&path).expect("CRD file");
    let crd: Value = serde_saphyr::from_str(&text).expect("CRD YAML");
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

fn example(file: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/k8s")
        .join(file);
    let text = std::fs::read_to_string(&path).expect("example file");
    serde_saphyr::from_str(&text).expect("example YAML")
}

/// The messages of the rules `object` breaks; panics on a rule that does not evaluate.
fn broken(schema: &Value, object: &Value) -> Vec<String> {
    match Validator::new().validate(schema, object, None) {
        Ok(()) => Vec::new(),
        Err(errors) => errors
            .into_vec()
            .into_iter()
            .map(|e| {
                assert_eq!(
                    e.kind,
                    ErrorKind::ValidationFailure,
                    "rule {} did not evaluate: {e}",
                    e.rule
                );
                e.message
            })
            .collect(),
    }
}

fn job() -> Value {
    example("trainingjob.yaml")
}

fn with(mut base: Value, pointer: &str, value: Value) -> Value {
    let (parent, field) = pointer.rsplit_once('/').expect("pointer");
    base.pointer_mut(parent).expect("parent")[field] = value;
    base
}

fn without(mut base: Value, pointer: &str) -> Value {
    let (parent, field) = pointer.rsplit_once('/').expect("pointer");
    base.pointer_mut(parent)
        .and_then(Value::as_object_mut)
        .expect("parent")
        .remove(field);
    base
}

#[test]
fn every_rule_compiles() {
    for file in [
        "trainingjobs.offpeak.dev.yaml",
        "energypolicies.offpeak.dev.yaml",
    ] {
        let compiled = compile_schema(&crd_schema(file));
        assert!(
            !compiled.has_errors(),
            "{file}: {:?}",
            compiled.compilation_errors()
        );
    }
}

#[test]
fn the_examples_pass() {
    let tj = crd_schema("trainingjobs.offpeak.dev.yaml");
    assert_eq!(broken(&tj, &job()), Vec::<String>::new());
    let ep = crd_schema("energypolicies.offpeak.dev.yaml");
    assert_eq!(
        broken(&ep, &example("energypolicy.yaml")),
        Vec::<String>::new()
    );
}

#[test]
fn each_class_of_bad_training_job_is_refused_with_its_message() {
    let schema = crd_schema("trainingjobs.offpeak.dev.yaml");
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "zero workers",
            with(job(), "/spec/workers", json!(0)),
            "workers must be at least 1",
        ),
        (
            "zero gpus",
            with(job(), "/spec/gpusPerWorker", json!(0)),
            "gpusPerWorker must be at least 1",
        ),
        (
            "negative price cap",
            with(job(), "/spec/priceCapPerMWh", json!(-1.5)),
            "priceCapPerMWh must not be negative",
        ),
        (
            "negative carbon cap",
            with(job(), "/spec/carbonCapGPerKWh", json!(-3)),
            "carbonCapGPerKWh must not be negative",
        ),
        (
            "no work",
            without(without(job(), "/spec/workHours"), "/spec/profileRef"),
            "set workHours",
        ),
        (
            "zero work",
            with(job(), "/spec/workHours", json!(0)),
            "workHours must be above zero",
        ),
        (
            "deadline and maxDelay",
            with(job(), "/spec/deadline", json!("2030-01-01T00:00:00Z")),
            "set at most one of deadline",
        ),
        (
            "negative maxDelay",
            with(job(), "/spec/maxDelay", json!("-2h")),
            "maxDelay must be a positive duration",
        ),
        (
            "checkpoint without preemptible",
            with(job(), "/spec/preemptible", json!(false)),
            "applies only to a preemptible job",
        ),
        (
            "grace period zero",
            with(job(), "/spec/checkpoint/gracePeriodSeconds", json!(0)),
            "gracePeriodSeconds must be between 1 and 86400",
        ),
        (
            "empty image",
            with(job(), "/spec/image", json!("")),
            "image must not be empty",
        ),
        (
            "empty accelerator",
            with(job(), "/spec/accelerator", json!("")),
            "accelerator must be a non-empty",
        ),
        (
            "team not a label value",
            with(job(), "/spec/team", json!("NLP team")),
            "team must be a label value",
        ),
        (
            "cost centre not a label value",
            with(job(), "/spec/costCentre", json!("-cc")),
            "costCentre must be a label value",
        ),
        (
            "name with a dot",
            with(job(), "/metadata/name", json!("bert.v2")),
            "metadata.name must be a DNS-1035 label",
        ),
        (
            "name too long",
            with(job(), "/metadata/name", json!("a".repeat(51))),
            "metadata.name must be a DNS-1035 label",
        ),
        (
            "empty profile name",
            with(job(), "/spec/profileRef", json!({"name": ""})),
            "profileRef.name must not be empty",
        ),
    ];
    for (what, object, message) in cases {
        let errors = broken(&schema, &object);
        assert!(
            errors.iter().any(|e| e.contains(message)),
            "{what}: expected {message:?}, got {errors:?}"
        );
        assert_eq!(errors.len(), 1, "{what}: one rule only, got {errors:?}");
    }
}

#[test]
fn profile_instead_of_work_hours_and_absolute_deadline_pass() {
    let schema = crd_schema("trainingjobs.offpeak.dev.yaml");
    let object = with(
        without(without(job(), "/spec/workHours"), "/spec/maxDelay"),
        "/spec/profileRef",
        json!({"name": "bert-large"}),
    );
    let object = with(object, "/spec/deadline", json!("2030-01-01T00:00:00Z"));
    assert_eq!(broken(&schema, &object), Vec::<String>::new());
    // Neither deadline nor maxDelay is allowed: an EnergyPolicy may supply the default.
    let object = without(object, "/spec/deadline");
    assert_eq!(broken(&schema, &object), Vec::<String>::new());
}

#[test]
fn bad_energy_policies_are_refused() {
    let schema = crd_schema("energypolicies.offpeak.dev.yaml");
    let policy = example("energypolicy.yaml");
    let cases = [
        (
            "/spec/priceCapPerMWh",
            json!(-1),
            "priceCapPerMWh must not be negative",
        ),
        (
            "/spec/carbonCapGPerKWh",
            json!(-0.5),
            "carbonCapGPerKWh must not be negative",
        ),
        (
            "/spec/monthlyBudget",
            json!(-100),
            "monthlyBudget must not be negative",
        ),
        (
            "/spec/carbonPricePerTonne",
            json!(-1),
            "carbonPricePerTonne must not be negative",
        ),
        (
            "/spec/defaultMaxDelay",
            json!("0s"),
            "defaultMaxDelay must be a positive duration",
        ),
    ];
    for (pointer, value, message) in cases {
        let errors = broken(&schema, &with(policy.clone(), pointer, value));
        assert!(
            errors.iter().any(|e| e.contains(message)),
            "{pointer}: expected {message:?}, got {errors:?}"
        );
    }
}
