use bpf_tests::provision::*;
#[test]
fn loads() {
    let h = Harness::new();
    let (a, _) = h.run(&[0u8; 60]);
    assert_eq!(a, XDP_PASS);
}
