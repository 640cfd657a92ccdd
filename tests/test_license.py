"""LICENSE is the Apache License 2.0, word for word the text JAX and Flax
ship, with the copyright line of its appendix filled in."""
import hashlib
import pathlib

LICENSE = pathlib.Path(__file__).resolve().parent.parent / "LICENSE"
# MD5 of https://www.apache.org/licenses/LICENSE-2.0.txt as jax-0.10.2's
# wheel ships it (its appendix's copyright line a placeholder).
STANDARD_MD5 = "3b83ef96387f14655fc854ddc3c6bd57"
OURS = "   Copyright 2026 The jaxcnn authors\n"
PLACEHOLDER = "   Copyright [yyyy] [name of copyright owner]\n"


def test_license_is_apache_2_with_our_copyright():
  text = LICENSE.read_text()
  assert text.count(OURS) == 1
  assert "Apache License\n                           Version 2.0" in text
  standard = text.replace(OURS, PLACEHOLDER)
  assert hashlib.md5(standard.encode()).hexdigest() == STANDARD_MD5
