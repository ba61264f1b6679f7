"""The embedded default model: a few-million-parameter GLM built from the training texts.

No machine of this project reaches a model hub, so the stack ships a recipe instead of weights:
a byte-level BPE tokenizer trained on the registered datasets (so every string, emoji included,
can be encoded and decoded), GLM-4's special tokens and chat template, and a randomly initialised
`GlmConfig` (or `Glm4Config`) model with a fixed seed. Both are saved with `save_pretrained` and
loaded back through `AutoTokenizer` / `AutoModelForCausalLM`, the code path real weights take.
The model is not pretrained: it only learns what fine-tuning teaches it.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from shared.data.registry import DatasetError, load_examples, load_registry
from shared.hparams import ADGEN_SOURCE_PREFIX
from shared.modeling.template import GLM4_CHAT_TEMPLATE

logger = logging.getLogger(__name__)

Variant = Literal["glm", "glm4"]
VARIANTS: dict[str, Variant] = {"tiny-glm": "glm", "tiny-glm4": "glm4"}

EOS_TOKEN = "<|endoftext|>"
# GLM-4's special tokens: the prompt starts with [gMASK]<sop>, turns start with a role token.
SPECIAL_TOKENS = [
    EOS_TOKEN,
    "[MASK]",
    "[gMASK]",
    "[sMASK]",
    "<sop>",
    "<eop>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|observation|>",
]
# A turn ends when the model starts the next user or tool turn, as in GLM-4's generation config.
STOP_TOKENS = [EOS_TOKEN, "<|user|>", "<|observation|>"]

VOCAB_SIZE = 8000
SEED = 20240601


def train_tokenizer(texts: Iterable[str], vocab_size: int = VOCAB_SIZE):
    """Train a byte-level BPE tokenizer on `texts` and wrap it as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        additional_special_tokens=SPECIAL_TOKENS[1:],
        padding_side="left",
        clean_up_tokenization_spaces=False,
        model_max_length=2048,
    )
    wrapped.chat_template = GLM4_CHAT_TEMPLATE
    return wrapped


def build_config(variant: Variant, tokenizer):
    """Return a small GLM or GLM-4 config sized for a CPU: 4 layers, hidden size 256."""
    from transformers import Glm4Config, GlmConfig

    config_class = GlmConfig if variant == "glm" else Glm4Config
    return config_class(
        vocab_size=len(tokenizer),
        hidden_size=256,
        intermediate_size=768,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,
        max_position_embeddings=2048,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.convert_tokens_to_ids(STOP_TOKENS),
        tie_word_embeddings=False,
    )


def corpus_texts(dataset_dir: Path, datasets: str | None) -> list[str]:
    """Collect the texts the tokenizer learns from: every readable registered dataset by default."""
    names = datasets or ",".join(
        name for name, spec in load_registry(dataset_dir).items() if spec.path.is_file()
    )
    if not names:
        raise DatasetError(f"no dataset file found under {dataset_dir}; the tokenizer needs training texts")
    texts = [ADGEN_SOURCE_PREFIX]
    for example in load_examples(names, dataset_dir):
        texts.extend([example.prompt, example.response])
    return texts


def build_tiny_model(output_dir: Path, texts: list[str], variant: Variant = "glm") -> Path:
    """Build the tokenizer and model and publish them atomically at `output_dir`."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    tokenizer = train_tokenizer(texts)
    config = build_config(variant, tokenizer)
    torch.manual_seed(SEED)
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config = GenerationConfig(
        eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id, do_sample=False
    )

    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}-", dir=output_dir.parent))
    staging.chmod(0o755)  # mkdtemp creates 0700; the published folder is read by other services' users.
    tokenizer.save_pretrained(staging)
    model.save_pretrained(staging)
    os.replace(staging, output_dir)
    params = sum(p.numel() for p in model.parameters())
    logger.info("built %s model with %.1fM parameters at %s", variant, params / 1e6, output_dir)
    return output_dir


def main(argv: list[str]) -> int:
    from shared.logs import setup_logging
    from shared.settings import TINY_MODEL_NAME, get_settings

    settings = get_settings()
    parser = argparse.ArgumentParser(prog="adgen build-tiny-model", description=__doc__.splitlines()[0])
    parser.add_argument("--name", choices=sorted(VARIANTS), default=TINY_MODEL_NAME, help="Model to build.")
    parser.add_argument("--output_dir", type=Path, help="Target folder; default: the models volume / NAME.")
    parser.add_argument("--dataset", help="Datasets whose texts train the tokenizer; default: all present.")
    parser.add_argument("--dataset_dir", type=Path, help="Folder of dataset_info.json; default DATA_DIR.")
    parser.add_argument("--force", action="store_true", help="Rebuild even if the folder exists.")
    args = parser.parse_args(argv)
    setup_logging()

    output_dir = args.output_dir or settings.models_dir / args.name
    if output_dir.exists() and not args.force:
        print(f"{output_dir} already exists; pass --force to rebuild it")
        return 0
    if output_dir.exists():
        import shutil

        shutil.rmtree(output_dir)
    texts = corpus_texts(args.dataset_dir or settings.data_dir, args.dataset)
    build_tiny_model(output_dir, texts, VARIANTS[args.name])
    print(output_dir)
    return 0
