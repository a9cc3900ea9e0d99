//! TensorBoard itself (its Python EventAccumulator) reads the event files we write.

use infinity_trainer::tensorboard::EventWriter;

use crate::{path_str, python};

#[test]
fn tensorboard_reads_scalars_images_and_text() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = EventWriter::create(dir.path()).unwrap();
    for step in 0..5u64 {
        w.scalar("train/loss", 1.0 / (step + 1) as f64, step).unwrap();
    }
    w.scalar("train/lr", 3e-4, 4).unwrap();
    // a non-square image: 2 rows × 3 columns, so swapped sides would show
    let rgb: Vec<u8> = (0..2 * 3 * 3).map(|i| (i * 13) as u8).collect();
    w.image("samples/grid", &rgb, 2, 3, 4).unwrap();
    w.text("config", "depth = 2\nwidth = 64", 0).unwrap();
    w.flush().unwrap();

    let out = python(&[&"tools/read_tensorboard.py", &path_str(dir.path())]);
    let json: serde_json::Value =
        serde_json::from_str(out.lines().last().unwrap()).unwrap_or_else(|e| panic!("{e}: {out}"));
    let loss = json["scalars"]["train/loss"].as_array().unwrap();
    assert_eq!(loss.len(), 5);
    assert_eq!(loss[2][0], 2);
    assert!((loss[2][1].as_f64().unwrap() - 1.0 / 3.0).abs() < 1e-6);
    assert!((json["scalars"]["train/lr"][0][1].as_f64().unwrap() - 3e-4).abs() < 1e-9);
    assert_eq!(json["images"]["samples/grid"][0], serde_json::json!([4, 3, 2]), "[step, width, height]");
    assert_eq!(json["text"]["config"][0][1], "depth = 2\nwidth = 64");
}
