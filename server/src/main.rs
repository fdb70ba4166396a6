fn main() {
    println!("metrum: under construction");
}
