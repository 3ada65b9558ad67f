"""Tiny random-weight checkpoints for tests, saved the way a user's checkpoint is.

Each builder writes a model and its tokenizer to a folder that loads through the
ordinary `from_pretrained(path)` path. Tokenizers are trained here on a few dozen
synthetic sentences; training is not reproducible across processes (token counts
differ slightly), so each kind is trained once per process and its
`tokenizer.json` reused. Tokenizer configs say `PreTrainedTokenizerFast` so that
transformers 4 and 5 both read them. Weights come from a fixed torch seed.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

_SUBJECTS = ["the cat", "a river", "my teacher", "this model", "our team", "the old bridge"]
_VERBS = ["explains", "watches", "builds", "answers", "crosses", "describes"]
_OBJECTS = ["a short story", "the data", "every question", "two apples", "the summary", "a poem"]
_EXTRA = [
    "Yes, that is correct.",
    "No, that is wrong.",
    "Is this a natural reply? Yes",
    "Is this response coherent? No",
    "question: answer yes or no. response: hello there. dialogue history: hi",
    "Write a list of three colours: red, green and blue.",
    "Explain why the sky is blue in one sentence.",
    "Translate 'good morning' into French: bonjour.",
    "1 2 3 4 5 6 7 8 9 10 ! ? . , ; : ' \" ( ) - _ / < > | = + * & % $ # @",
]

#: tokenizer.json text per kind, trained once per process.
_TRAINED: dict[str, str] = {}

GPT_SPECIAL = ["<|endoftext|>", "<|padding|>"]
OASST_SPECIAL = ["<|prompter|>", "<|assistant|>"]


def corpus() -> list[str]:
    """A few dozen synthetic sentences (no real data) to train the test tokenizers on."""
    made = [
        f"{s.capitalize()} {v} {o}."
        for s, v, o in itertools.islice(itertools.product(_SUBJECTS, _VERBS, _OBJECTS), 0, None, 7)
    ]
    # "Yes" and "No" often enough to become single tokens (UniEval reads their logits)
    return made + _EXTRA + ["Yes", "No"] * 20


def _train(kind: str) -> str:
    if kind in _TRAINED:
        return _TRAINED[kind]
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )

    if kind == "byte-bpe":  # GPT-2 / GPT-NeoX style
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=400,
            special_tokens=GPT_SPECIAL,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(corpus(), trainer)
    elif kind == "t5":  # sentencepiece-like: pad=0, </s>=1, <unk>=2 as in T5
        tok = Tokenizer(models.BPE(unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        trainer = trainers.BpeTrainer(
            vocab_size=400, special_tokens=["<pad>", "</s>", "<unk>"], show_progress=False
        )
        tok.train_from_iterator(corpus(), trainer)
        tok.post_processor = processors.TemplateProcessing(
            single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
        )
    elif kind == "wordpiece":  # BERT style
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(
            vocab_size=400,
            special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
            show_progress=False,
        )
        tok.train_from_iterator(corpus(), trainer)
        cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
        )
    else:  # pragma: no cover - programming error
        raise ValueError(f"unknown tokenizer kind {kind!r}")
    _TRAINED[kind] = tok.to_str()
    return _TRAINED[kind]


def save_tokenizer(
    directory: Path, kind: str, *, added_special: tuple[str, ...] = (), **config: Any
) -> Any:
    """Write tokenizer.json + tokenizer_config.json and return the loaded fast tokenizer.

    `added_special` appends special tokens to the trained vocabulary (as fine-tuned
    checkpoints such as the OpenAssistant reward models do).
    """
    from tokenizers import AddedToken, Tokenizer
    from transformers import AutoTokenizer

    directory.mkdir(parents=True, exist_ok=True)
    trained = Tokenizer.from_str(_train(kind))
    if added_special:
        trained.add_special_tokens([AddedToken(t, special=True) for t in added_special])
    (directory / "tokenizer.json").write_text(trained.to_str(), encoding="utf-8")
    # what the real tokenizers of each family hand the model (transformers 4 and 5
    # default differently for PreTrainedTokenizerFast)
    inputs = ["input_ids", "attention_mask"]
    if kind == "wordpiece":
        inputs = ["input_ids", "token_type_ids", "attention_mask"]
    settings = {"tokenizer_class": "PreTrainedTokenizerFast", "model_input_names": inputs}
    settings.update(config)
    if added_special:
        settings["additional_special_tokens"] = list(added_special)
    (directory / "tokenizer_config.json").write_text(json.dumps(settings, indent=2))
    (directory / "special_tokens_map.json").write_text(
        json.dumps({k: v for k, v in config.items() if k.endswith("_token")}, indent=2)
    )
    return AutoTokenizer.from_pretrained(str(directory))


def _wordpiece_tokenizer(folder: Path) -> Any:
    """A BERT-style WordPiece tokenizer saved in `folder` (shared by the BERT builders)."""
    return save_tokenizer(
        folder,
        "wordpiece",
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=128,
    )


def _seed(seed: int) -> None:
    import torch

    torch.manual_seed(seed)


def build_causal_lm(directory: str | Path, *, seed: int = 0) -> Path:
    """A GPT-2 causal LM (2 layers, width 64) with a byte-level BPE tokenizer."""
    from transformers import GPT2Config, GPT2LMHeadModel

    out = Path(directory)
    tok = save_tokenizer(
        out,
        "byte-bpe",
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        pad_token="<|padding|>",
        model_max_length=128,
    )
    _seed(seed)
    config = GPT2Config(
        vocab_size=len(tok),
        n_positions=128,
        n_embd=64,
        n_layer=2,
        n_head=2,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    GPT2LMHeadModel(config).eval().save_pretrained(str(out))
    return out


def build_reward_model(
    directory: str | Path,
    *,
    seed: int = 0,
    oasst_tokens: bool = True,
    chat_template: str | None = None,
    num_labels: int = 1,
) -> Path:
    """A GPT-NeoX sequence classifier with one output (a reward head), like the OASST Pythia RMs.

    `oasst_tokens` writes <|prompter|>/<|assistant|> as special tokens of the tokenizer
    (as the OpenAssistant checkpoints have); `chat_template` stores a Jinja chat template;
    `num_labels` other than 1 makes a classifier that is not a reward model.
    """
    from transformers import GPTNeoXConfig, GPTNeoXForSequenceClassification

    out = Path(directory)
    config: dict[str, Any] = {
        "bos_token": "<|endoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|padding|>",
        "model_max_length": 128,
    }
    if chat_template is not None:
        config["chat_template"] = chat_template
    added = tuple(OASST_SPECIAL) if oasst_tokens else ()
    tok = save_tokenizer(out, "byte-bpe", added_special=added, **config)
    _seed(seed)
    model_config = GPTNeoXConfig(
        vocab_size=len(tok),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=128,
        num_labels=num_labels,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    model = GPTNeoXForSequenceClassification(model_config).eval()
    model.save_pretrained(str(out))
    return out


def build_t5(directory: str | Path, *, seed: int = 0) -> Path:
    """A T5 seq2seq model (2+2 layers, width 64) whose vocabulary holds "Yes" and "No" as tokens."""
    from transformers import T5Config, T5ForConditionalGeneration

    out = Path(directory)
    tok = save_tokenizer(
        out,
        "t5",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        model_max_length=128,
    )
    for word in ("Yes", "No"):
        ids = tok(word, add_special_tokens=False).input_ids
        if len(ids) != 1:  # pragma: no cover - guards the corpus above
            raise RuntimeError(f"tiny T5 tokenizer splits {word!r} into {ids}")
    _seed(seed)
    config = T5Config(
        vocab_size=len(tok),
        d_model=64,
        d_kv=16,
        d_ff=128,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        decoder_start_token_id=tok.pad_token_id,
    )
    T5ForConditionalGeneration(config).eval().save_pretrained(str(out))
    return out


def build_sentence_transformer(directory: str | Path, *, seed: int = 0) -> Path:
    """A tiny BERT wrapped as a sentence-transformer: Transformer + mean Pooling + Normalize."""
    from transformers import BertConfig, BertModel

    try:  # sentence-transformers 6 moved the modules; the old path still works with a warning
        from sentence_transformers.sentence_transformer.modules import (
            Normalize,
            Pooling,
            Transformer,
        )
    except ImportError:  # pragma: no cover - older sentence-transformers
        from sentence_transformers.models import Normalize, Pooling, Transformer
    from sentence_transformers import SentenceTransformer

    out = Path(directory)
    base = out.parent / f"{out.name}-bert"
    tok = _wordpiece_tokenizer(base)
    _seed(seed)
    config = BertConfig(
        vocab_size=len(tok),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=128,
        pad_token_id=tok.pad_token_id,
    )
    BertModel(config).eval().save_pretrained(str(base))
    transformer = Transformer(str(base), max_seq_length=128)
    dim = (
        transformer.get_embedding_dimension()
        if hasattr(transformer, "get_embedding_dimension")
        else transformer.get_word_embedding_dimension()
    )
    st = SentenceTransformer(modules=[transformer, Pooling(dim, pooling_mode="mean"), Normalize()])
    st.save(str(out))
    return out


def build_oasst_reward_model(directory: str | Path, *, seed: int = 0) -> Path:
    """A checkpoint laid out like the OpenAssistant Pythia reward models.

    Their config says `"model_type": "gpt_neox_reward_model"` (an architecture that
    transformers does not ship): a GPT-NeoX trunk saved under `gpt_neox.*` and a
    one-output linear head `out_proj` applied to the hidden state of the last
    attended token (`"pooling": "last"`). Written here with plain torch and
    safetensors so that the test does not depend on the code under test.
    """
    import torch
    from safetensors.torch import save_file
    from transformers import GPTNeoXConfig, GPTNeoXModel

    out = Path(directory)
    tok = save_tokenizer(
        out,
        "byte-bpe",
        added_special=tuple(OASST_SPECIAL),
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        pad_token="<|padding|>",
        model_max_length=128,
    )
    _seed(seed)
    config = GPTNeoXConfig(
        vocab_size=len(tok),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=128,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    trunk = GPTNeoXModel(config).eval()
    head = torch.nn.Linear(64, 1)
    tensors = {f"gpt_neox.{k}": v.contiguous() for k, v in trunk.state_dict().items()}
    tensors.update({f"out_proj.{k}": v.contiguous() for k, v in head.state_dict().items()})
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    raw = config.to_dict()
    raw.update(
        model_type="gpt_neox_reward_model", architectures=["GPTNeoXRewardModel"], pooling="last"
    )
    (out / "config.json").write_text(json.dumps(raw, indent=2, default=str))
    return out


def build_encoder_reward_model(directory: str | Path, *, seed: int = 0) -> Path:
    """A BERT sequence classifier with one output, read as a (prompt, response) sentence pair.

    Like the OpenAssistant DeBERTa reward models, but with segment (token type)
    embeddings, so that a scorer that drops `token_type_ids` gives other values.
    """
    from transformers import BertConfig, BertForSequenceClassification

    out = Path(directory)
    tok = _wordpiece_tokenizer(out)
    _seed(seed)
    config = BertConfig(
        vocab_size=len(tok),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=128,
        type_vocab_size=2,
        pad_token_id=tok.pad_token_id,
        num_labels=1,
    )
    import torch

    model = BertForSequenceClassification(config).eval()
    with torch.no_grad():  # make the segment embeddings clearly differ
        model.bert.embeddings.token_type_embeddings.weight[1].add_(1.0)
    model.save_pretrained(str(out))
    return out
