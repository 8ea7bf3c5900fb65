fn main() {
    println!("erofsd");
}
