// temporary measurement, not committed
#[tokio::main]
async fn main() {
    let a: Vec<String> = std::env::args().collect();
    let (addr, token, n, sids) = (
        &a[1],
        &a[2],
        a[3].parse::<usize>().unwrap(),
        a[4].split(',').map(String::from).collect::<Vec<_>>(),
    );
    let http = reqwest::Client::new();
    let mut lat = Vec::new();
    for i in 0..n {
        let sid = &sids[i % sids.len()];
        let t = std::time::Instant::now();
        let r = http
            .post(format!("http://{addr}/v1/sessions/{sid}/call"))
            .bearer_auth(token)
            .json(
                &serde_json::json!({"op": "set", "value": {"v": format!("{i}{}", "x".repeat(95))}}),
            )
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.status());
        r.bytes().await.unwrap();
        lat.push(t.elapsed());
    }
    lat.sort();
    println!(
        "{} calls over {} sessions: p50 {:?} mean {:?}",
        n,
        sids.len(),
        lat[n / 2],
        lat.iter().sum::<std::time::Duration>() / n as u32
    );
}
