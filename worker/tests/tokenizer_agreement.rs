//! The tokenizer built from GGUF metadata (for engines without one, and for the bench) agrees token for
//! token with llama.cpp's own on strings that break naive tokenizers.

use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::model::params::LlamaModelParams;
use model_input::gguf::GgufFile;
use model_input::tokenizer::Tokenizer;

const HARD_STRINGS: &[&str] = &[
    "Hello world",
    " leading space",
    "  two leading spaces and trailing  ",
    "digits 1234567890 and 3.14159, 1,000,000",
    "tabs\tbetween\t\twords",
    "new\nlines\n\n\nmany\r\nwindows",
    "emoji 🦀🚀👨‍👩‍👧 done",
    "中文字符和日本語のテキスト",
    "Ünïcödé àccents — em dash… ellipsis",
    "fn main() { println!(\"{}\", x[0] + 1); } // code",
    "def f(a, b):\n    return a**2 + b  # python",
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|> after a special token",
    "I'm sure they've said we'll go, isn't it? I'D SHOUT",
    "URLs like https://example.com/a?b=c&d=e#f",
    "mixed123abc456 x2 2x",
    "year 2024: 42 apples, 7 pears",
    "",
    " ",
    "\n",
    "a",
];

#[test]
fn gguf_tokenizer_agrees_with_llama_cpp_on_hard_strings() {
    let path = model_input::model_cache::ensure_default_model().unwrap();
    let ours = Tokenizer::from_gguf(&GgufFile::open(&path).unwrap()).unwrap();
    let backend = worker::engine::llama::default_backend(&path).unwrap();
    let model = LlamaModel::load_from_file(backend, &path, &LlamaModelParams::default().with_vocab_only(true)).unwrap();
    let vocab = model.vocab();
    assert_eq!(ours.vocab_size(), vocab.n_tokens() as usize);

    let mut disagreements = Vec::new();
    for text in HARD_STRINGS {
        for parse_special in [true, false] {
            let theirs: Vec<u32> = vocab.tokenize(text.as_bytes(), true, parse_special).into_iter().map(|t| t.0 as u32).collect();
            let mine = ours.encode(text, parse_special);
            if mine != theirs {
                disagreements.push(format!("{text:?} (parse_special {parse_special}): ours {mine:?}, llama.cpp {theirs:?}"));
            }
            if !parse_special {
                assert_eq!(ours.decode(&mine, false), *text, "decoding gives the text back");
            }
        }
    }
    assert!(disagreements.is_empty(), "{} disagreements:\n{}", disagreements.len(), disagreements.join("\n"));
    assert!(ours.is_special(ours.encode("<|im_start|>", true)[0]));
}
