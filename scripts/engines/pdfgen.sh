# Real PDFs for the parser tests, written the ways Arabic PDFs are written in the wild:
# - fpdf2 with HarfBuzz shaping (uharfbuzz): glyph by glyph in visual order, each glyph
#   mapped back to its base letters, as office suites and fpdf2/ReportLab+HarfBuzz do;
# - arabic-reshaper + python-bidi, the common recipe for tools that cannot shape: the
#   text is turned into presentation-form characters and reversed before it is drawn.
# The DejaVu font carries the Arabic glyphs and the presentation forms.
PDFGEN_FPDF2_VERSION=2.8.9
PDFGEN_UHARFBUZZ_VERSION=0.57.0
PDFGEN_RESHAPER_VERSION=3.1.0
PDFGEN_BIDI_VERSION=0.6.12

pdfgen_dir() {
    echo "$IAF_CACHE/pdfgen-fpdf2-$PDFGEN_FPDF2_VERSION-hb-$PDFGEN_UHARFBUZZ_VERSION-reshaper-$PDFGEN_RESHAPER_VERSION-bidi-$PDFGEN_BIDI_VERSION"
}

pdfgen_install() {
    apt_install fonts-dejavu-core python3-venv
    local dir; dir="$(pdfgen_dir)"
    [ -x "$dir/bin/python" ] \
        && "$dir/bin/python" -c 'import fpdf, uharfbuzz, arabic_reshaper, bidi' 2>/dev/null \
        && return 0
    log "installing fpdf2 $PDFGEN_FPDF2_VERSION, uharfbuzz $PDFGEN_UHARFBUZZ_VERSION, arabic-reshaper $PDFGEN_RESHAPER_VERSION and python-bidi $PDFGEN_BIDI_VERSION into $dir"
    rm -rf "$dir"
    python3 -m venv "$dir"
    "$dir/bin/pip" install -q "fpdf2==$PDFGEN_FPDF2_VERSION" "uharfbuzz==$PDFGEN_UHARFBUZZ_VERSION" \
        "arabic-reshaper==$PDFGEN_RESHAPER_VERSION" "python-bidi==$PDFGEN_BIDI_VERSION"
}

pdfgen_up() {
    pdfgen_install
    env_set IAF_TEST_PDFGEN_PYTHON "$(pdfgen_dir)/bin/python"
    env_set IAF_TEST_ARABIC_FONT /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf
}
