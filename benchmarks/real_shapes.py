"""Models with the geometry of the real families where it sets the cost of an audit, built in memory from configs
(random weights, nothing downloaded), at a tiny width for a CPU or at 7B width for a GPU.

What sets the cost is how many tokens reach the language model (image tokens + prompt) and how many patches the
vision tower sees; the width and depth only scale each token's price. So each shape keeps the real image
processor's geometry and the real token counts:

- ``llava-1.5``: CLIP ViT-L/14 at 336 px, 576 image tokens (the CLS token dropped), Vicuna-7B at 7B width;
- ``qwen2-vl-448`` / ``qwen2-vl-896``: Qwen2-VL's native-resolution ViT (patch 14, 2x2 merge) on a 448 / 896 px
  square image: 1024 / 4096 patches, 256 / 1024 image tokens; Qwen2-VL-7B at 7B width;
- ``smolvlm``: SmolVLM-Instruct's tiling (Idefics3 processor: the longest edge resized to 1536 px, 384 px tiles,
  SigLIP patch 14, pixel shuffle by 3): a square image is 4 x 4 tiles + the global image, 17 x 81 = 1377 image
  tokens; at 7B width a Llama-7B-wide language model with a SigLIP-so400m tower (SmolVLM's own LM is 1.7B).

``build(shape, width, device)`` returns ``(model, processor)``; ``questions()`` gives POPE-style yes/no questions of
20-60 question tokens under the tiny tokenizer (the length the issue's users run).
"""

from __future__ import annotations

import torch

SHAPES = ("llava-1.5", "qwen2-vl-448", "qwen2-vl-896", "smolvlm")
WIDTHS = ("tiny", "7b")

# POPE asks "Is there a X in the image?"; users' prompts around it add an instruction. With the tiny byte-level
# tokenizer (trained on a few sentences) these come to 20-60 question tokens.
QUESTIONS = [
    "Is there a dog in the image? Please answer yes or no.",
    "Is there a bicycle leaning against the wall next to the red door in this picture? Answer yes or no.",
    "Looking at the whole image, is there a person holding an umbrella? Please answer with yes or no.",
    "Is there a traffic light in the image?",
    "Does the picture show a cat sitting on a chair near the window? Answer with one word, yes or no.",
    "Is there a cup on the table in the image? Please answer the question with yes or no.",
]


def _tiny_text(vocab: int, **ids):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=8192, **ids)


def _llama_7b(vocab: int, **ids):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=vocab, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=8192, **ids)


def _instantiate(cls, config, device, dtype, seed: int = 0):
    """Random weights, initialised where the model will run (7B parameters initialise in seconds on a GPU, in
    minutes on a CPU)."""
    torch.manual_seed(seed)
    with torch.device(device):
        model = cls(config)
    return model.to(dtype).eval()


def build(shape: str, width: str = "tiny", device: str | torch.device = "cpu",
          dtype: torch.dtype = torch.float32):
    """(model, processor) of ``shape`` at ``width`` ("tiny": 2 layers of 64 in the LLM, 2 of 32 in the vision
    tower; "7b": the real widths and depths)."""
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")
    if width not in WIDTHS:
        raise ValueError(f"unknown width {width!r}; known: {', '.join(WIDTHS)}")
    device = torch.device(device)
    if shape == "llava-1.5":
        return _llava(width, device, dtype)
    if shape.startswith("qwen2-vl"):
        return _qwen2_vl(int(shape.rsplit("-", 1)[1]), width, device, dtype)
    return _smolvlm(width, device, dtype)


def _llava(width, device, dtype):
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    from mbias.tiny import LLAVA_CHAT_TEMPLATE, build_tokenizer

    tok = build_tokenizer(["<pad>", "<s>", "</s>", "<unk>", "<image>"])
    tok.pad_token, tok.bos_token, tok.eos_token, tok.unk_token = "<pad>", "<s>", "</s>", "<unk>"
    ids = dict(bos_token_id=1, eos_token_id=2, pad_token_id=0)
    if width == "tiny":
        vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                  image_size=336, patch_size=14, projection_dim=32)
        text = _tiny_text(len(tok), **ids)
    else:  # llava-hf/llava-1.5-7b-hf: CLIP ViT-L/14-336 + Vicuna-7B
        vision = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                  num_attention_heads=16, image_size=336, patch_size=14, projection_dim=768)
        text = _llama_7b(32064, **ids)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_id=tok.convert_tokens_to_ids("<image>"),
                         vision_feature_layer=-2, vision_feature_select_strategy="default", tie_word_embeddings=False)
    proc = LlavaProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 336},
                                                             crop_size={"height": 336, "width": 336}),
                          tokenizer=tok, patch_size=14, vision_feature_select_strategy="default",
                          num_additional_image_tokens=1, chat_template=LLAVA_CHAT_TEMPLATE)
    return _instantiate(LlavaForConditionalGeneration, config, device, dtype), proc


def _qwen2_vl(px, width, device, dtype):
    from transformers import (
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    from mbias.tiny import QWEN2_VL_CHAT_TEMPLATE, QWEN2_VL_SPECIALS, qwen2_vl_tokenizer

    tok = qwen2_vl_tokenizer()
    pixels = px * px
    kw = dict(min_pixels=pixels, max_pixels=pixels, patch_size=14, merge_size=2, temporal_patch_size=2)
    proc = Qwen2VLProcessor(image_processor=Qwen2VLImageProcessor(**kw), tokenizer=tok,
                            video_processor=Qwen2VLVideoProcessor(**kw), chat_template=QWEN2_VL_CHAT_TEMPLATE)
    t = {s: tok.convert_tokens_to_ids(s) for s in QWEN2_VL_SPECIALS}
    ids = dict(bos_token_id=t["<|endoftext|>"], eos_token_id=t["<|im_end|>"], pad_token_id=t["<|endoftext|>"])
    if width == "tiny":
        text = dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32768,
                    rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0}, **ids)
        vision = dict(depth=2, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2, patch_size=14,
                      spatial_merge_size=2, temporal_patch_size=2)
    else:  # Qwen/Qwen2-VL-7B-Instruct
        text = dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                    num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=32768,
                    rope_parameters={"rope_type": "default", "mrope_section": [16, 24, 24], "rope_theta": 1e6}, **ids)
        vision = dict(depth=32, embed_dim=1280, hidden_size=3584, num_heads=16, mlp_ratio=4, patch_size=14,
                      spatial_merge_size=2, temporal_patch_size=2)
    config = Qwen2VLConfig(vision_config=vision, text_config=text, tie_word_embeddings=False,
                           image_token_id=t["<|image_pad|>"], video_token_id=t["<|video_pad|>"],
                           vision_start_token_id=t["<|vision_start|>"], vision_end_token_id=t["<|vision_end|>"])
    return _instantiate(Qwen2VLForConditionalGeneration, config, device, dtype), proc


def _smolvlm(width, device, dtype):
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessor,
        Idefics3Processor,
        Idefics3VisionConfig,
    )

    from mbias.tiny import IDEFICS3_CHAT_TEMPLATE, idefics3_tokenizer

    tok = idefics3_tokenizer()
    tile, patch, scale = 384, 14, 3
    image_seq_len = (tile // patch) ** 2 // scale ** 2  # 81
    proc = Idefics3Processor(
        image_processor=Idefics3ImageProcessor(size={"longest_edge": 4 * tile}, max_image_size={"longest_edge": tile},
                                               do_image_splitting=True),
        tokenizer=tok, image_seq_len=image_seq_len, chat_template=IDEFICS3_CHAT_TEMPLATE)
    if width == "tiny":
        vision = Idefics3VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                      image_size=tile, patch_size=patch)
        text = _tiny_text(len(tok), pad_token_id=0)
    else:  # SigLIP-so400m tower, a Llama-7B-wide language model
        vision = Idefics3VisionConfig(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27,
                                      num_attention_heads=16, image_size=tile, patch_size=patch)
        text = _llama_7b(49152, pad_token_id=0)
    config = Idefics3Config(vision_config=vision, text_config=text, image_token_id=tok.convert_tokens_to_ids("<image>"),
                            scale_factor=scale, tie_word_embeddings=False)
    return _instantiate(Idefics3ForConditionalGeneration, config, device, dtype), proc


def examples(n: int, size: int = 512):
    """``n`` POPE-style examples (yes/no choices) on the synthetic benchmark's scenes, resized to ``size`` px (each
    processor then resizes to its own geometry)."""
    from mbias.example import Example
    from mbias.synth import load_synth

    ds = load_synth("shapes-p90/test-balanced")
    out = []
    for i in range(n):
        image = ds[i].image.convert("RGB").resize((size, size))
        out.append(Example(id=f"real-shape-{i}", image=image, question=QUESTIONS[i % len(QUESTIONS)],
                           answer="yes" if i % 2 == 0 else "no", choices=["yes", "no"]))
    return out


# A trained model at the LLaVA-1.5 geometry: random weights make a near-additive Shapley game (every estimator looks
# exact), so the accuracy-per-coalition comparisons need weights that learned something. The zoo's recipe on
# shapes-p50 (the wording predicts the answer half the time: the model must read both), its 32 px scenes resized
# by the CLIP processor to 336 px, patch 14: 576 image tokens. Batch 16 and 600 steps, not the zoo's 64 x 800:
# each step prices 576 image tokens per example (~1.3 s on 2 cores): 16 minutes on 2 cores, test-balanced accuracy
# 0.63 (colour 1.00, exists 0.96, shape at chance: the 2-layer, 32-wide tower on 576 patches learns colour first).
TRAINED_LLAVA_STEPS, TRAINED_LLAVA_BATCH = 600, 16


def trained_llava(progress: bool = True):
    """The folder of a tiny LLaVA trained at 336 px / patch 14 (576 image tokens), built into the zoo cache on first
    use (keyed by its config, so a changed recipe trains afresh)."""
    from mbias.zoo import ZooEntry, build_entry
    from mbias.zoo.train import ZooTrainConfig

    entry = ZooEntry(name="llava-1.5-shape-shapes-p50", data="synth:shapes-p50/train",
                     description="tiny LLaVA trained on shapes-p50 at LLaVA-1.5's 336 px / patch 14",
                     train=ZooTrainConfig(image_size=336, patch_size=14, steps=TRAINED_LLAVA_STEPS,
                                          batch_size=TRAINED_LLAVA_BATCH))
    return build_entry(entry, progress=progress)


if __name__ == "__main__":  # build the trained model ahead of a benchmark: python benchmarks/real_shapes.py
    import logging

    logging.basicConfig(level=logging.INFO)
    print(trained_llava())
