"""Token languages: one interface (`base.TokenLanguage`), three implementations (the wavelet
language, BPE over it, pixels), and the scan grammar and coder behind the wavelet language."""
