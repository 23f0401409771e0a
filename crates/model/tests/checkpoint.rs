use candle_core::{Device, Tensor};
use denoise_model::{Checkpoint, Model, ModelConfig, ModelError, SeedUnetConfig};

fn small() -> ModelConfig {
    ModelConfig::SeedUnet(SeedUnetConfig {
        base: 8,
        ..Default::default()
    })
}

#[test]
fn a_checkpoint_describes_itself_and_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.safetensors");
    let model = Model::new(&small(), &Device::Cpu, 3).unwrap();
    model.save(&path).unwrap();
    let loaded = Model::load(&path, &Device::Cpu).unwrap();
    assert_eq!(loaded.config(), small());
    let x = Tensor::rand(0f32, 1f32, (1, 3, 16, 24), &Device::Cpu).unwrap();
    let a = model.forward(&x, None, None).unwrap();
    let b = loaded.forward(&x, None, None).unwrap();
    let d = (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert_eq!(d, 0.0);
    // No temporary file is left behind.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn same_seed_same_weights() {
    let a = Model::new(&small(), &Device::Cpu, 5).unwrap();
    let b = Model::new(&small(), &Device::Cpu, 5).unwrap();
    let c = Model::new(&small(), &Device::Cpu, 6).unwrap();
    let w = |m: &Model| {
        m.vars()[4]
            .1
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    assert_eq!(w(&a), w(&b));
    assert_ne!(w(&a), w(&c));
}

#[test]
fn bad_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.safetensors");
    std::fs::write(&junk, b"definitely not safetensors").unwrap();
    let e = Model::load(&junk, &Device::Cpu).unwrap_err();
    assert!(matches!(e, ModelError::BadCheckpoint { .. }), "{e}");
    assert!(e.to_string().contains("junk.safetensors"), "{e}");

    let missing = Model::load(&dir.path().join("nope.safetensors"), &Device::Cpu).unwrap_err();
    assert!(matches!(missing, ModelError::Io { .. }), "{missing}");

    // A valid model file cut short.
    let path = dir.path().join("m.safetensors");
    Model::new(&small(), &Device::Cpu, 0)
        .unwrap()
        .save(&path)
        .unwrap();
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    assert!(matches!(
        Model::load(&path, &Device::Cpu),
        Err(ModelError::BadCheckpoint { .. })
    ));

    // A checkpoint without model metadata.
    let other = dir.path().join("other.safetensors");
    Checkpoint::new(&other).save().unwrap();
    let e = Model::load(&other, &Device::Cpu).unwrap_err();
    assert!(e.to_string().contains("denoise.model"), "{e}");
}

#[test]
fn input_sizes_are_checked() {
    let m = Model::new(&small(), &Device::Cpu, 0).unwrap();
    let x = Tensor::zeros((1, 3, 20, 16), candle_core::DType::F32, &Device::Cpu).unwrap();
    assert!(matches!(
        m.forward(&x, None, None),
        Err(ModelError::BadSize { .. })
    ));
    let x = Tensor::zeros((1, 1, 16, 16), candle_core::DType::F32, &Device::Cpu).unwrap();
    assert!(matches!(
        m.forward(&x, None, None),
        Err(ModelError::BadChannels { .. })
    ));
}
