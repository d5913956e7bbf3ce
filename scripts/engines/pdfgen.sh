# Real PDFs for the parser tests: fpdf2 with HarfBuzz shaping (uharfbuzz) writes
# Arabic the way many PDF producers do, glyph by glyph in visual order, and the
# DejaVu font carries the Arabic glyphs.
PDFGEN_FPDF2_VERSION=2.8.9
PDFGEN_UHARFBUZZ_VERSION=0.57.0

pdfgen_dir() { echo "$IAF_CACHE/pdfgen-fpdf2-$PDFGEN_FPDF2_VERSION-hb-$PDFGEN_UHARFBUZZ_VERSION"; }

pdfgen_install() {
    apt_install fonts-dejavu-core
    local dir; dir="$(pdfgen_dir)"
    [ -x "$dir/bin/python" ] && "$dir/bin/python" -c 'import fpdf, uharfbuzz' 2>/dev/null && return 0
    log "installing fpdf2 $PDFGEN_FPDF2_VERSION and uharfbuzz $PDFGEN_UHARFBUZZ_VERSION into $dir"
    rm -rf "$dir"
    python3 -m venv "$dir"
    "$dir/bin/pip" install -q "fpdf2==$PDFGEN_FPDF2_VERSION" "uharfbuzz==$PDFGEN_UHARFBUZZ_VERSION"
}

pdfgen_up() {
    pdfgen_install
    env_set IAF_TEST_PDFGEN_PYTHON "$(pdfgen_dir)/bin/python"
    env_set IAF_TEST_ARABIC_FONT /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf
}
