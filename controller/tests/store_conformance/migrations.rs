//! Migrations: connecting again to an existing database applies nothing new
//! and keeps the data.

use super::*;

pub(crate) async fn migrations_are_idempotent_and_keep_data(database: &TestDatabase) {
    let store = database.store();
    create_draft(store.as_ref(), "durable", "1.0.0").await;
    add(
        store.as_ref(),
        "durable",
        "1.0.0",
        &new_artifact("kept", Quantization::Q4KM),
    )
    .await;
    for _ in 0..2 {
        let reopened = store::connect(&database.url)
            .await
            .expect("connect again to the same database");
        assert_eq!(reopened.backend(), store.backend());
        reopened.ping().await.expect("ping");
        let model = reopened
            .get_model(&model_name("durable"))
            .await
            .expect("get model");
        assert!(model.is_some(), "data survives reconnecting");
        let artifacts = reopened
            .list_artifacts(&model_name("durable"), &semver("1.0.0"))
            .await
            .expect("list artifacts");
        assert_eq!(artifacts.len(), 1);
    }
}
