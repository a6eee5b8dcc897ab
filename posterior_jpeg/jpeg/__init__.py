"""The JPEG substrate, no learning: tables, DCT, colour, sampling, codecs, files, projection."""
