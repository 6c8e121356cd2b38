"""Special tokens the project adds to every tokenizer.

The image placeholder is a real token of the tokenizer (no negative sentinel ids): the model finds
it in ``input_ids`` and replaces it by the visual tokens. The SSFT markers wrap cognition-alignment
answers (Tab. 20 of the paper) and are added as special tokens so they never split.
"""

IMAGE_TOKEN = "<image>"
VQ_START = "<vq start>"
VQ_END = "<vq end>"
RGB_START = "<rgb start>"
RGB_END = "<rgb end>"
PAD_TOKEN = "<pad>"

IGNORE_INDEX = -100
"""Label of a position that is not supervised (PyTorch's ``cross_entropy`` default ``ignore_index``)."""

SSFT_MARKERS = (VQ_START, VQ_END, RGB_START, RGB_END)
SPECIAL_TOKENS = (IMAGE_TOKEN, *SSFT_MARKERS)


def vq_code_token(index: int) -> str:
    """The token of codebook entry ``index`` when ``ssft.vq_encoding=tokens``."""
    return f"<vq_{index}>"
