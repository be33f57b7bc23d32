"""Checkpoint loading: formats, shards, dtypes, and errors that name the file and the problem."""

import json
import shutil
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file, save_file

from emu3 import checkpoint
from emu3.checkpoint import CheckpointError, load_lm, load_vision_tokenizer, save_lm
from emu3.config import lm_preset
from emu3.model import Transformer


@pytest.fixture()
def lm_dir(tmp_path):
    model = Transformer(lm_preset("tiny", vocab_size=300, pad_token_id=0, max_position_embeddings=64))
    model.init_weights(generator=torch.Generator().manual_seed(0))
    return save_lm(model, tmp_path / "lm"), model


def test_save_and_load_round_trip(lm_dir):
    folder, model = lm_dir
    loaded = load_lm(folder)
    assert loaded.config == model.config
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)


def test_sharded_checkpoint_with_index(lm_dir):
    folder, model = lm_dir
    tensors = load_file(str(folder / "model.safetensors"))
    keys = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": keys[: len(keys) // 2],
              "model-00002-of-00002.safetensors": keys[len(keys) // 2:]}
    for name, names in shards.items():
        save_file({k: tensors[k] for k in names}, str(folder / name))
    (folder / "model.safetensors").unlink()
    index = {"weight_map": {k: name for name, names in shards.items() for k in names}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    ids = torch.randint(1, 300, (1, 6))
    torch.testing.assert_close(load_lm(folder)(ids), model.eval()(ids))
    (folder / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match="shards listed in .* are missing"):
        load_lm(folder)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_loading(lm_dir, dtype):
    model = load_lm(lm_dir[0], dtype=dtype)
    assert {p.dtype for p in model.parameters()} == {dtype}
    assert model(torch.tensor([[1, 2, 3]])).dtype == torch.float32


def test_missing_folder_and_files(tmp_path, lm_dir):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_lm(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="config.json is missing"):
        load_lm(tmp_path / "empty")
    folder = lm_dir[0]
    (folder / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no safetensors weights"):
        load_lm(folder)
    torch.save({}, folder / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="pickled weights are not loaded"):
        load_lm(folder)


def test_corrupt_files(lm_dir):
    folder = lm_dir[0]
    (folder / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CheckpointError, match="cannot read .*model.safetensors"):
        load_lm(folder)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_lm(folder)


def test_shape_and_key_mismatches(lm_dir):
    folder = lm_dir[0]
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "intermediate_size": 64}))
    with pytest.raises(CheckpointError, match="mlp.gate_proj.weight has shape"):
        load_lm(folder)
    (folder / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 3}))
    with pytest.raises(CheckpointError, match="1 missing keys|missing keys"):
        load_lm(folder)


def test_a_tensor_of_the_wrong_dtype_kind_is_named_with_file_key_and_dtype(lm_dir):
    folder = lm_dir[0]
    tensors = load_file(str(folder / "model.safetensors"))
    key = "model.layers.0.self_attn.q_proj.weight"
    tensors[key] = tensors[key].to(torch.int8)
    save_file(tensors, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match=f"model.safetensors: {key} has dtype torch.int8, the model needs a "
                                              "floating-point tensor"):
        load_lm(folder)


def test_wrong_kind_of_folder(emu3_fixture, tmp_path):
    with pytest.raises(CheckpointError, match="holds a vision tokenizer"):
        load_lm(emu3_fixture / "Emu3-VisionTokenizer-tiny")
    with pytest.raises(CheckpointError, match="not a vision tokenizer"):
        load_vision_tokenizer(emu3_fixture / "Emu3-tiny")
    shutil.copytree(emu3_fixture / "Emu3-tiny", tmp_path / "alone")
    with pytest.raises(CheckpointError, match="no vision tokenizer found"):
        checkpoint.find_vision_tokenizer(tmp_path / "alone")


def test_an_emu35_vision_tokenizer_where_an_emu3_one_is_expected_names_the_family(emu35_fixture):
    with pytest.raises(CheckpointError, match=r"Emu3.5-VisionTokenizer-tiny is an Emu3.5 \(IBQ\) vision tokenizer; "
                                              "an Emu3 one is needed"):
        load_vision_tokenizer(emu35_fixture / "Emu3.5-VisionTokenizer-tiny")


@pytest.mark.parametrize("config,missing", [
    ({"model_type": "emu3", "vq_config": {}}, "text_config is missing"),
    ({"model_type": "emu3", "text_config": {}}, "vq_config is missing"),
    ({"text_config": {}}, "vq_config is missing"),
    ({"model_type": "emu3"}, "text_config and vq_config are missing"),
])
def test_an_incomplete_hf_config_says_which_part_is_missing(tmp_path, config, missing):
    (tmp_path / "config.json").write_text(json.dumps(config))
    for load in (load_lm, load_vision_tokenizer):
        with pytest.raises(CheckpointError, match=f"config.json is an incomplete -hf config: it needs text_config "
                                                  f"and vq_config, and {missing}"):
            load(tmp_path)


def test_vision_tokenizer_is_found_beside_the_lm(emu3_fixture):
    assert checkpoint.find_vision_tokenizer(emu3_fixture / "Emu3-tiny").name == "Emu3-VisionTokenizer-tiny"


@pytest.fixture()
def fake_hub(monkeypatch, tmp_path):
    """huggingface_hub with no network: `cached` ids are in the cache at tmp_path, `online` ids on the hub;
    `calls` records each snapshot_download / repo_info call."""
    hub = pytest.importorskip("huggingface_hub")
    hub_state = SimpleNamespace(cached=set(), online=set(), calls=[], folder=tmp_path)

    def snapshot_download(repo_id, *, local_files_only=False, etag_timeout=None):
        hub_state.calls.append(("snapshot_download", repo_id, local_files_only))
        if repo_id in hub_state.cached or (not local_files_only and repo_id in hub_state.online):
            return str(hub_state.folder)
        raise FileNotFoundError("not in the cache") if local_files_only else AssertionError("unbounded call")

    class HfApi:
        def repo_info(self, repo_id, *, timeout=None):
            hub_state.calls.append(("repo_info", repo_id, timeout))
            if timeout is None:
                raise AssertionError("a repo_info call without a timeout can hang")
            if repo_id not in hub_state.online:
                raise TimeoutError(f"timed out after {timeout} s")

    monkeypatch.setattr(hub, "snapshot_download", snapshot_download)
    monkeypatch.setattr(hub, "HfApi", HfApi)
    checkpoint._hub_snapshot.cache_clear()
    yield hub_state
    checkpoint._hub_snapshot.cache_clear()


def test_a_cached_hub_id_resolves_without_the_network_once_per_process(fake_hub, tmp_path):
    fake_hub.cached.add("BAAI/Emu3-Gen")
    assert checkpoint.resolve("BAAI/Emu3-Gen") == tmp_path
    assert checkpoint.resolve("BAAI/Emu3-Gen") == tmp_path
    assert fake_hub.calls == [("snapshot_download", "BAAI/Emu3-Gen", True)]


def test_an_uncached_hub_id_is_fetched_after_a_bounded_question(fake_hub, tmp_path):
    fake_hub.online.add("BAAI/Emu3-Gen")
    assert checkpoint.resolve("BAAI/Emu3-Gen") == tmp_path
    assert [c[0] for c in fake_hub.calls] == ["snapshot_download", "repo_info", "snapshot_download"]
    assert fake_hub.calls[1] == ("repo_info", "BAAI/Emu3-Gen", checkpoint.HUB_TIMEOUT)


def test_a_stalled_hub_is_a_clear_error_naming_the_id(fake_hub):
    with pytest.raises(CheckpointError, match=r"'BAAI/Emu3-Gen' is not a local folder nor in the hub cache, and "
                                              r"could not be fetched from the hub .*timed out after 10.0 s"):
        checkpoint.resolve("BAAI/Emu3-Gen")


def test_a_hub_id_in_the_original_layout_needs_its_vision_tokenizer_before_the_lm_loads(
        fake_hub, emu3_fixture, tmp_path, monkeypatch):
    from emu3.pipelines.loading import Emu3

    fake_hub.cached.add("BAAI/Emu3-Gen")
    fake_hub.folder = tmp_path / "hub" / "models--BAAI--Emu3-Gen" / "snapshots" / ("0" * 40)
    shutil.copytree(emu3_fixture / "Emu3-tiny", fake_hub.folder)
    shutil.copytree(emu3_fixture / "Emu3-VisionTokenizer-tiny", fake_hub.folder.parent / ("1" * 40))
    monkeypatch.setattr(checkpoint, "read_tensors", lambda *a, **k: pytest.fail("the LM was read"))
    with pytest.raises(CheckpointError, match="is a hub snapshot, .*--vision-tokenizer is required"):
        Emu3.load("BAAI/Emu3-Gen")


@pytest.mark.parametrize("change,match", [
    ({"num_attention_heads": "4"}, r"num_attention_heads must be a positive integer, got '4'"),
    ({"num_key_value_heads": 0}, "num_key_value_heads must be a positive integer, got 0"),
    ({"hidden_size": -32}, "hidden_size must be a positive integer"),
    ({"pad_token_id": 300}, "pad_token_id 300 is outside the vocabulary of 300"),
    ({"rms_norm_eps": None}, "rms_norm_eps must be a positive number"),
])
def test_invalid_config_fields_are_named_with_the_file(lm_dir, change, match):
    folder = lm_dir[0]
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(CheckpointError, match=f"config.json: {match}"):
        load_lm(folder)


def test_a_config_that_is_not_an_object_or_a_bad_shard_index(lm_dir):
    folder = lm_dir[0]
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": ["model.safetensors"]}))
    with pytest.raises(CheckpointError, match="not a valid shard index: weight_map must map"):
        load_lm(folder)
    (folder / "config.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="config.json is not a model config: expected a JSON object"):
        load_lm(folder)


def test_invalid_vision_tokenizer_config_and_preprocessor(emu3_fixture, tmp_path):
    folder = shutil.copytree(emu3_fixture / "Emu3-VisionTokenizer-tiny", tmp_path / "vq")
    good = (folder / "config.json").read_text()
    (folder / "config.json").write_text(json.dumps({**json.loads(good), "ch_mult": 4}))
    with pytest.raises(CheckpointError, match="config.json: ch_mult must be a list of positive integers"):
        load_vision_tokenizer(folder)
    (folder / "config.json").write_text(good)
    (folder / "preprocessor_config.json").write_text(json.dumps({"image_std": [0, 0, 0]}))
    with pytest.raises(CheckpointError, match="preprocessor_config.json: image_std"):
        load_vision_tokenizer(folder)


def test_vision_tokenizer_search_skips_neighbours_that_are_not_checkpoints(emu3_fixture, tmp_path):
    shutil.copytree(emu3_fixture / "Emu3-tiny", tmp_path / "lm")
    shutil.copytree(emu3_fixture / "Emu3-VisionTokenizer-tiny", tmp_path / "vq")
    for name, text in [("a-list", b"[1]"), ("a-binary", b"\xff\xfe\x00")]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_bytes(text)
    assert checkpoint.find_vision_tokenizer(tmp_path / "lm") == tmp_path / "vq"


def test_two_vision_tokenizers_beside_the_lm_are_refused_not_picked_by_name(emu3_fixture, tmp_path):
    shutil.copytree(emu3_fixture / "Emu3-tiny", tmp_path / "lm")
    for name in ("vq-a", "vq-b"):
        shutil.copytree(emu3_fixture / "Emu3-VisionTokenizer-tiny", tmp_path / name)
    with pytest.raises(CheckpointError, match=r"2 vision tokenizers next to .*lm \(vq-a, vq-b\); pass the one that "
                                              r"belongs to it \(--vision-tokenizer DIR\)"):
        checkpoint.find_vision_tokenizer(tmp_path / "lm")


def test_building_on_meta_skips_initialisation_and_loading_imports_no_compiler(emu3_fixture):
    from emu3.model.meta import build_on_meta

    with build_on_meta():
        embedding = torch.nn.Embedding(8, 4)
        drawn = torch.zeros(3, device="cpu").normal_()  # a real tensor is still initialised
    assert embedding.weight.is_meta and drawn.abs().sum() > 0
    # torch's meta `normal_` and `arange` import torch._dynamo and symbolic shapes (a second and a half
    # of the main job); loading must not
    slow = ["torch._dynamo", "torch.fx.experimental.symbolic_shapes"]
    code = ("import sys; from emu3.pipelines.loading import Emu3; "
            f"Emu3.load({str(emu3_fixture / 'Emu3-tiny')!r}, {str(emu3_fixture / 'Emu3-VisionTokenizer-tiny')!r}); "
            f"print([m for m in {slow!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_vision_tokens_file_cut_short_is_named_in_the_vocabulary_mismatch(emu3_fixture, tmp_path):
    from emu3 import Emu3

    lm = tmp_path / "Emu3-tiny"
    shutil.copytree(emu3_fixture / "Emu3-tiny", lm)
    lines = (lm / "emu3_vision_tokens.txt").read_text().splitlines()
    (lm / "emu3_vision_tokens.txt").write_text("\n".join(lines[:103]) + "\n")  # cut at a line end
    with pytest.raises(CheckpointError, match=r"Emu3-tiny: the tokenizer has \d+ tokens but the model's vocabulary "
                                              r"is \d+; 100 of the tokenizer's are visual tokens listed in "
                                              r"emu3_vision_tokens.txt: is it complete\?"):
        Emu3.load(lm, emu3_fixture / "Emu3-VisionTokenizer-tiny")


def test_a_vision_tokenizer_of_another_codebook_is_not_a_pair(emu3_fixture):
    from emu3 import Emu3
    from emu3.bundled import VISION_TOKENIZER_DIR

    with pytest.raises(CheckpointError, match=r"the vision tokenizer .*vision-tokenizer has 1024 codes but the "
                                              r"language model .*Emu3-tiny has 32768 visual tokens: they are not a pair"):
        Emu3.load(emu3_fixture / "Emu3-tiny", VISION_TOKENIZER_DIR)
