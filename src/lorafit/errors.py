"""The catalogue of user-facing errors and warnings.

Every problem a user can cause has a code and a message that names the file, line, column, key or value,
says what was expected and, where possible, what to do (spaCy's ``Errors`` pattern). Raise with
``raise LorafitError("E101", path=..., ...)``; the CLI prints ``[E101] message`` in one line and exits 2.
"""

from __future__ import annotations

import logging

logger = logging.getLogger("lorafit")

ERRORS: dict[str, str] = {
    # config (E0xx)
    "E001": "Unknown config key '{key}' in {where}. Known keys: {known}.",
    "E002": "Config key '{key}' has the wrong type: got {value!r} ({got}), expected {expected}.",
    "E003": "Config key '{key}' has an invalid value {value!r}: {expected}.",
    "E004": "Unknown preset '{name}'. Available presets: {known}. Run `lorafit presets` to see them.",
    "E005": "Config file '{path}' could not be read: {reason}.",
    "E006": "Override '{text}' is not of the form section.key=value (e.g. --set lora.r=8).",
    "E007": "Unknown TrainingArguments setting 'training.{key}'. It is passed to transformers.TrainingArguments, "
    "which has no such field{hint}.",
    "E008": "TrainingArguments rejected the training settings: {reason}.",
    "E009": "No training data given: set --dataset NAME (Hub) or --train-file FILE.",
    "E010": "Budget '{value}' is not a parameter count: use e.g. 1M, 750k or 900000.",
    "E011": "No standard LoRA configuration fits a budget of {budget:,} trainable parameters: the smallest, "
    "{smallest}, needs {needed:,}. Raise the budget or use fewer labels.",
    # data (E1xx)
    "E101": "Data file '{path}' does not exist.",
    "E102": "Data path '{path}' is a directory; expected a file.",
    "E103": "Data file '{path}' has an unsupported extension '{ext}': expected .csv, .tsv, .jsonl, .json or .parquet "
    "(or .pkl with --allow-pickle).",
    "E104": "Data file '{path}' is empty: expected a header and at least one row.",
    "E105": "Data file '{path}' has a header but no rows.",
    "E106": "Data file '{path}' is not valid UTF-8 (byte {offset}): re-save it as UTF-8.",
    "E107": "Column '{column}' not found in {where}. Available columns: {available}.{hint}",
    "E108": "Empty or missing text in {where}, row {row}, column '{column}'. Remove the row or fill the text.",
    "E109": "Label {value!r} in {where}, row {row}, is not in the label set {labels}.",
    "E110": "Empty or missing label in {where}, row {row}, column '{column}'.",
    "E111": "Data file '{path}' could not be parsed: {reason}.",
    "E112": "The training data has only one class ({label!r}); classification needs at least two.",
    "E113": "Could not load dataset '{name}' from the Hugging Face Hub: {reason}. Offline? Use local files with "
    "--train-file, or set HF_HUB_OFFLINE=1 if the dataset is in your cache.",
    "E114": "Validation size {value} is too small or too large for {rows} training rows and {classes} classes.",
    "E115": "Duplicate id {value!r} in {where}, column '{column}', rows {first} and {row}.",
    "E116": "Reading '{path}' needs unpickling, which can run arbitrary code: pass --allow-pickle if you trust "
    "the file, or convert it to CSV / JSONL / Parquet.",
    "E117": "The length filter removed every training row (min {min}, max {max} tokens).",
    "E118": "class_weights has {got} values but there are {expected} labels ({labels}).",
    # model (E2xx)
    "E201": "Model '{path}' could not be loaded: {reason}.",
    "E202": "Cannot reach the Hugging Face Hub to load '{name}' and it is not in the local cache. Pass a local "
    "folder with --model PATH, or run once with network access.",
    "E203": "Base model does not match the one this adapter was trained on: {field} is {got!r}, expected "
    "{expected!r}. Pass the right base with --base-model PATH.",
    "E204": "Target module(s) {missing} not found in the model. Linear modules available: {available}.",
    "E205": "max_length {value} is above the model's limit of {limit} positions.",
    "E206": "Task mismatch: '{path}' holds a {got} model, but {expected} was requested.",
    "E207": "LoRA target '{name}' is the classification head; the head is trained in full already. "
    "Remove it from lora.target_modules.",
    # run folder (E3xx)
    "E301": "Output folder '{path}' already exists and is not empty. Pass --overwrite to replace it, or choose "
    "another --output-dir.",
    "E302": "'{path}' is not a lorafit run or bundle folder: {reason}.",
    "E303": "Weights missing in '{path}': expected {expected}.",
    "E304": "File '{path}' does not match the manifest: {reason}. The run folder was changed after it was written.",
    "E305": "Merge proof failed: max |logit difference| between the adapter model and the merged model is "
    "{delta:.3g}, above the tolerance {tolerance:g}. The merged weights in '{path}' are wrong.",
    "E306": "Input file '{path}' could not be read: {reason}.",
    "E307": "Nothing to predict: give --text or --input FILE.",
    "E308": "Data labels {labels} are not labels of this model ({known}).",
    "E309": "Checkpoint file '{path}' is a pickle that this run's manifest did not record (or it changed since): "
    "loading it could run arbitrary code. Pass --allow-pickle if you trust it.",
    # resources (E4xx)
    "E401": "Batch size must be at least 1, got {value} for '{key}'.",
    "E402": "Precision '{value}' is not supported here: {reason}.",
    "E403": "The training loss became {loss} at step {step}; training stopped. The last good checkpoint is "
    "{checkpoint}: lower the learning rate or use --precision fp32, then --resume or start again.",
    # NER (E5xx)
    "E501": "Data file '{path}', line {line}: {reason}. Expected CoNLL: one 'token<TAB>tag' per line (or "
    "whitespace-separated columns with the tag last), a blank line between sentences.",
    "E502": "Tag {tag!r} in {where}, {unit} {line}, is not a known tag. Known tags: {known}.",
    "E503": "Mixed tag schemes in {where}: {unit} {line} has tag {tag!r} ({kind}), but {unit} {first_line} has "
    "{first!r} ({first_kind}). Use one scheme per file: IO (person, O), BIO (B-person, I-person, O) or BIOES.",
    "E504": "Empty sentence in {where}, {unit} {line}: a sentence needs at least one token.",
    "E505": "The {split} data ({where}) {what} that the training data does not (first: tag {tag!r} at {unit} "
    "{line}); the training data has {known}. Train, validation and test need one tag scheme and label set: give the "
    "full tag list with --labels (data.labels) if the training sample only lacks rare types.",
    "E506": "{where} has no entities: every tag of its {sentences} sentence(s) is 'O'. NER data needs entity tags "
    "(is the tag column the right one?).",
    "E507": "The tokenizer of '{path}' splits pre-split words differently from the same words joined by spaces "
    "({detail}), so word labels would land on the wrong sub-tokens. RoBERTa-family (byte-level BPE) tokenizers "
    "must be loaded with add_prefix_space=True for NER.",
    "E508": "{where}, {unit} {line}: {tokens} tokens but {tags} tags; every token needs exactly one tag.",
    "E509": "Cannot read '{path}' as NER data: {reason}. Pass --format conll, jsonl or csv.",
    "E510": "{where}, {unit} {line}: {reason}.",
    "E511": "The tokenizer of '{path}' is not a fast (Rust) tokenizer: NER needs its word_ids() to align word "
    "labels with sub-tokens.",
    # reports, export and serving (E6xx)
    "E601": "Unknown export format '{value}': supported formats are {known}.",
    "E602": "Unknown quantization '{value}': supported are {known} (or leave --quantize out for fp32 only).",
    "E603": "Export of '{path}' to ONNX failed: {reason}. Run with --debug for the traceback.",
    "E604": "Export parity failed: max |logit difference| between PyTorch and the ONNX fp32 graph is {delta:.3g}, "
    "above the tolerance {tolerance:g}; nothing was written to '{path}'.",
    "E605": "Backend '{backend}' cannot load '{path}': it holds {holds}. {hint}",
    "E606": "Cannot listen on {host}:{port}: {reason}. Choose another --port (0 picks a free one).",
    "E607": "{what} needs the optional package '{package}': pip install 'lorafit[{extra}]'.",
    "E608": "Server limit '{key}' must be a positive integer, got {value}.",
    "E609": "Unknown ONNX variant '{value}' for '{path}': it holds {known}.",
}

WARNINGS: dict[str, str] = {
    "W001": "bf16 was requested but this hardware has no bf16 support ({reason}); training in fp32 instead.",
    "W002": "'{name}' is a Hub id; the planner assumes its checkpoint is complete (only the head is new).",
    "W003": "{count} of {rows} rows in '{split}' are longer than max_length {max_length} tokens and are truncated.",
    "W004": "The length filter removed {removed} of {rows} training rows (outside {min}..{max} tokens).",
    "W005": "Module(s) {modules} are missing from the checkpoint and will be trained and saved with the adapter.",
    "W501": "{count} of {rows} sentences in '{split}' are longer than max_length {max_length} tokens: they are "
    "split into overlapping windows (stride {stride}) and every word is still scored.",
    "W601": "Plot(s) not written: {reason}.",
}


class LorafitError(Exception):
    """A user-facing error with a catalogue code: the CLI prints it in one line and exits with code 2."""

    def __init__(self, code: str, **fields: object) -> None:
        self.code = code
        self.fields = fields
        template = ERRORS[code]
        try:
            text = template.format(**fields)
        except (KeyError, IndexError, ValueError) as err:  # a bug in the caller, not the user's fault
            raise RuntimeError(f"error {code} raised without field {err}") from err
        self.message = " ".join(text.split())
        super().__init__(f"[{code}] {self.message}")


def warn(code: str, **fields: object) -> str:
    """Log a catalogued warning and return its text (tests and reports can use it)."""
    text = f"[{code}] " + " ".join(WARNINGS[code].format(**fields).split())
    logger.warning(text)
    return text
