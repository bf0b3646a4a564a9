"""Tiny, randomly initialised models of the real MLLM architectures, built fully offline.

Nothing here downloads: the tokenizer is a small byte-level BPE trained on a few sentences, image processors
come from their defaults with small sizes, and every model is a real transformers class built from a config.
Each builder saves model + processor with ``save_pretrained`` and returns the folder, so tests and the zoo load
them back through exactly the ``from_pretrained`` path a user's hub model takes.
"""

from __future__ import annotations

import logging
from pathlib import Path

logger = logging.getLogger(__name__)

# Words the synthetic benchmark uses, plus everyday English so users' questions tokenize sensibly too.
_CORPUS = [
    "What colour is the circle? What color is the square? What is the colour of the triangle?",
    "red green blue yellow purple orange white black grey pink cyan brown",
    "circle square triangle cross star diamond shape shapes object objects",
    "Is there a circle in the image? Is there a square in the picture? yes no",
    "How many shapes are there? How many objects can you see? zero one two three four five six",
    "Where is the shape? left right top bottom middle centre center upper lower",
    "Which shape is it? What shape is shown? Answer with one word. Describe the image.",
    "The quick brown fox jumps over the lazy dog. A photo of a cat on a mat. Please answer the question.",
    "USER: ASSISTANT: user assistant system Question: Answer: The answer is",
    " ".join(["USER: ASSISTANT:", "User: Assistant:", "<|im_start|>user <|im_start|>assistant"] * 8),
    "0 1 2 3 4 5 6 7 8 9 10 small large big tiny size position count",
    # every answer word after a space and after a newline, so answers are single tokens in any template
    " ".join(f"Answer: {w} answer {w}\n{w}" for w in (
        "red green blue yellow purple orange circle square triangle diamond left middle right one two three "
        "yes no").split()),
]


def build_tokenizer(special_tokens: list[str], vocab_size: int = 512, extra_tokens: list[str] | None = None):
    """A byte-level BPE tokenizer (any text encodes) with the family's special tokens at fixed ids 0..k-1."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    from mbias.synth import PHRASINGS

    corpus = _CORPUS + [" ".join(p) for p in PHRASINGS.values()]
    tok.train_from_iterator(corpus * 4, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok)
    if extra_tokens:
        fast.add_special_tokens({"additional_special_tokens": extra_tokens})
    return fast


def _llama_text_config(vocab_size: int, hidden: int = 64, layers: int = 2, heads: int = 4, **kw):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=512,
        **kw,
    )


LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] != 'system' %}{{ message['role'].upper() + ': ' }}{% endif %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' ' }}{% endfor %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

QWEN2_VL_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

IDEFICS3_CHAT_TEMPLATE = (
    "<|im_start|>"
    "{% for message in messages %}"
    "{{ message['role'] | capitalize }}"
    "{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for line in message['content'] %}"
    "{% if line['type'] == 'text' %}{{ line['text'] }}{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}"
    "{% endfor %}"
    "<end_of_utterance>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)


def build_llava(
    out_dir: str | Path,
    *,
    image_size: int = 32,
    patch_size: int = 8,
    hidden: int = 64,
    text_layers: int = 2,
    vision_hidden: int = 32,
    vision_layers: int = 2,
    seed: int = 0,
) -> Path:
    """LLaVA-1.5 layout: CLIP vision tower -> MLP projector -> Llama; one image token per patch (CLS dropped)."""
    import torch
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    tokenizer = build_tokenizer(["<pad>", "<s>", "</s>", "<unk>", "<image>"])
    tokenizer.pad_token, tokenizer.bos_token, tokenizer.eos_token, tokenizer.unk_token = "<pad>", "<s>", "</s>", "<unk>"
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA_CHAT_TEMPLATE,
    )
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=vision_hidden,
            intermediate_size=vision_hidden * 2,
            num_hidden_layers=vision_layers,
            num_attention_heads=2,
            image_size=image_size,
            patch_size=patch_size,
            projection_dim=vision_hidden,
        ),
        text_config=_llama_text_config(
            len(tokenizer), hidden, text_layers, bos_token_id=1, eos_token_id=2, pad_token_id=0
        ),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    # CLIP initialises position embeddings ~9x smaller than patch embeddings; trained from scratch, a tiny
    # model then takes long to learn *where* things are. Same scale as the patch embedding fixes that.
    with torch.no_grad():
        model.model.vision_tower.embeddings.position_embedding.weight.normal_(std=vision_hidden**-0.5)
    return _save(model, processor, out_dir)


def build_llava_next(out_dir: str | Path, *, image_size: int = 32, patch_size: int = 8, hidden: int = 64,
                     seed: int = 0) -> Path:
    """LLaVA-NeXT layout: a base view plus AnyRes tiles, with an image-newline embedding after each tile row."""
    import torch
    from transformers import (
        CLIPVisionConfig,
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessor,
        LlavaNextProcessor,
    )

    tokenizer = build_tokenizer(["<pad>", "<s>", "</s>", "<unk>", "<image>"])
    tokenizer.pad_token, tokenizer.bos_token, tokenizer.eos_token, tokenizer.unk_token = "<pad>", "<s>", "</s>", "<unk>"
    grid = [[image_size, image_size], [image_size, 2 * image_size], [2 * image_size, image_size]]
    image_processor = LlavaNextImageProcessor(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        image_grid_pinpoints=grid,
    )
    processor = LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA_CHAT_TEMPLATE,
    )
    config = LlavaNextConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
            image_size=image_size, patch_size=patch_size, projection_dim=32,
        ),
        text_config=_llama_text_config(len(tokenizer), hidden, 2, bos_token_id=1, eos_token_id=2, pad_token_id=0),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        image_grid_pinpoints=grid,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlavaNextForConditionalGeneration(config)
    return _save(model, processor, out_dir)


QWEN2_VL_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                     "<|image_pad|>", "<|video_pad|>")


def qwen2_vl_tokenizer():
    """The Qwen2-VL tokenizer layout: its vision start/end, image and video pad tokens (``QWEN2_VL_SPECIALS``)."""
    tokenizer = build_tokenizer(list(QWEN2_VL_SPECIALS))
    tokenizer.pad_token, tokenizer.eos_token = "<|endoftext|>", "<|im_end|>"
    return tokenizer


def build_qwen2_vl(out_dir: str | Path, *, image_size: int = 64, patch_size: int = 8, hidden: int = 64,
                   seed: int = 0, version: str = "2") -> Path:
    """Qwen2-VL (or Qwen2.5-VL with ``version='2.5'``): native-resolution ViT, 2x2 patch merge, M-RoPE."""
    import torch
    from transformers import Qwen2VLImageProcessor, Qwen2VLProcessor, Qwen2VLVideoProcessor

    tokenizer = qwen2_vl_tokenizer()
    pixels = image_size * image_size
    image_processor = Qwen2VLImageProcessor(
        min_pixels=pixels, max_pixels=pixels, patch_size=patch_size, merge_size=2, temporal_patch_size=2
    )
    video_processor = Qwen2VLVideoProcessor(
        min_pixels=pixels, max_pixels=pixels, patch_size=patch_size, merge_size=2, temporal_patch_size=2
    )
    processor = Qwen2VLProcessor(
        image_processor=image_processor, tokenizer=tokenizer, video_processor=video_processor,
        chat_template=QWEN2_VL_CHAT_TEMPLATE,
    )
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN2_VL_SPECIALS}
    text = dict(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0},
                bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"])
    special_ids = dict(image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                       vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    if version == "2.5":
        from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

        vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=hidden,
                      patch_size=patch_size, spatial_merge_size=2, temporal_patch_size=2, window_size=4 * patch_size,
                      fullatt_block_indexes=[1])
        config = Qwen2_5_VLConfig(vision_config=vision, text_config=text, tie_word_embeddings=False, **special_ids)
        cls = Qwen2_5_VLForConditionalGeneration
    else:
        from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

        vision = dict(depth=2, embed_dim=32, hidden_size=hidden, num_heads=2, mlp_ratio=2, patch_size=patch_size,
                      spatial_merge_size=2, temporal_patch_size=2)
        config = Qwen2VLConfig(vision_config=vision, text_config=text, tie_word_embeddings=False, **special_ids)
        cls = Qwen2VLForConditionalGeneration
    torch.manual_seed(seed)
    model = cls(config)
    return _save(model, processor, out_dir)


def idefics3_tokenizer():
    """The Idefics3 / SmolVLM tokenizer layout: its image, tile-position and end-of-utterance tokens."""
    extra = ["<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>"]
    extra += [f"<row_{i + 1}_col_{j + 1}>" for i in range(6) for j in range(6)]
    tokenizer = build_tokenizer(["<pad>", "<|im_start|>", "<|im_end|>", "<unk>"], extra_tokens=extra)
    tokenizer.pad_token, tokenizer.bos_token, tokenizer.eos_token, tokenizer.unk_token = (
        "<pad>", "<|im_start|>", "<end_of_utterance>", "<unk>")
    return tokenizer


def build_idefics3(out_dir: str | Path, *, image_size: int = 64, patch_size: int = 8, hidden: int = 64,
                   scale_factor: int = 2, split_images: bool = False, seed: int = 0) -> Path:
    """Idefics3 / SmolVLM layout: SigLIP-style ViT, pixel-shuffle connector, Llama; optional image splitting."""
    import torch
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessor,
        Idefics3Processor,
        Idefics3VisionConfig,
    )

    tokenizer = idefics3_tokenizer()
    image_processor = Idefics3ImageProcessor(
        size={"longest_edge": (2 if split_images else 1) * image_size},
        max_image_size={"longest_edge": image_size},
        do_image_splitting=split_images,
    )
    image_seq_len = (image_size // patch_size) ** 2 // scale_factor**2
    processor = Idefics3Processor(
        image_processor=image_processor, tokenizer=tokenizer, image_seq_len=image_seq_len,
        chat_template=IDEFICS3_CHAT_TEMPLATE,
    )
    config = Idefics3Config(
        vision_config=Idefics3VisionConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
            image_size=image_size, patch_size=patch_size,
        ),
        text_config=_llama_text_config(len(tokenizer), hidden, 2, pad_token_id=0),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        scale_factor=scale_factor,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = Idefics3ForConditionalGeneration(config)
    return _save(model, processor, out_dir)


def build_paligemma(out_dir: str | Path, *, image_size: int = 32, patch_size: int = 8, hidden: int = 64,
                    seed: int = 0) -> Path:
    """PaliGemma layout: SigLIP ViT -> linear projector -> Gemma, prefix-LM attention over image + prompt."""
    import torch
    from transformers import (
        GemmaConfig,
        PaliGemmaConfig,
        PaliGemmaForConditionalGeneration,
        PaliGemmaProcessor,
        SiglipImageProcessor,
        SiglipVisionConfig,
    )

    tokenizer = build_tokenizer(["<pad>", "<eos>", "<bos>", "<unk>", "<image>"])
    tokenizer.pad_token, tokenizer.eos_token, tokenizer.bos_token, tokenizer.unk_token = "<pad>", "<eos>", "<bos>", "<unk>"
    tokenizer.add_bos_token = False
    n_tokens = (image_size // patch_size) ** 2
    image_processor = SiglipImageProcessor(size={"height": image_size, "width": image_size})
    image_processor.image_seq_length = n_tokens
    processor = PaliGemmaProcessor(image_processor=image_processor, tokenizer=tokenizer)
    config = PaliGemmaConfig(
        vision_config=SiglipVisionConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
            image_size=image_size, patch_size=patch_size, projection_dim=hidden,
            vision_use_head=False,  # as in real PaliGemma checkpoints: the features are the last hidden state
        ),
        text_config=GemmaConfig(
            vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=1, head_dim=16, max_position_embeddings=512,
            pad_token_id=0, eos_token_id=1, bos_token_id=2,
        ),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        projection_dim=hidden,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = PaliGemmaForConditionalGeneration(config)
    return _save(model, processor, out_dir)


BUILDERS = {
    "llava": build_llava,
    "llava_next": build_llava_next,
    "qwen2_vl": build_qwen2_vl,
    "qwen2_5_vl": lambda out_dir, **kw: build_qwen2_vl(out_dir, version="2.5", **kw),
    "idefics3": build_idefics3,
    "paligemma": build_paligemma,
}


def build_tiny(family: str, out_dir: str | Path, **kwargs) -> Path:
    """Build, save and return the folder of a tiny random model of ``family`` (see ``BUILDERS``)."""
    if family not in BUILDERS:
        raise ValueError(f"no tiny builder for {family!r}; known: {', '.join(BUILDERS)}")
    return BUILDERS[family](out_dir, **kwargs)


def _save(model, processor, out_dir: str | Path) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    logger.info("saved tiny %s to %s", type(model).__name__, out)
    return out
