fn main() {
    println!("lattice-bot");
}
